"""The checks that a replica still equals the log, and what counts as a difference.

Every second the follower asks whether the log still holds everything the replica
applied (no seq beyond the log's end, no fewer entries up to the replica's seq
than it applied), and every few seconds it compares one held record (random, or
the one under suspicion) and the newest with the log's own entry. A difference
that lasts ``diverge_after`` seconds raises Diverged: the follower then rebuilds
the replica from the log alone.
"""

import logging
import random
import time

from chat.replica import Replica
from chatlog import ChatLog, LogEntry, LogInfo, Record, TailBroken, take
from chatlog.names import channel_of
from chatlog.records import encode_record

log = logging.getLogger("chat.integrity")


class Diverged(TailBroken):
    """The replica holds something the log does not: it must be rebuilt from the log."""

    code = "diverged"


class Suspicion:
    """A difference from the log is acted on only once it has been seen for ``confirm``
    seconds. Right after a partition a server that has not yet learnt it lost its
    leadership can answer with an older state of the stream for a moment (the fault
    suite saw one answer "the log ends at 134" to a node at 410); a log that really
    lost entries stays that way."""

    def __init__(self, what: str, confirm: float) -> None:
        self._what = what
        self._confirm = confirm
        self._since: float | None = None
        self.seq: tuple[int, str] | None = None
        """The record (seq, channel) to look at again, for a suspicion about one record."""

    def observe(self, problem: str | None, seq: tuple[int, str] | None = None) -> None:
        if problem is None:
            self._since, self.seq = None, None
            return
        now = time.monotonic()
        if self._since is None:
            self._since, self.seq = now, seq
            log.warning("%s may differ from the log (%s); looking again", self._what, problem)
        elif now - self._since >= self._confirm:
            raise Diverged(problem)


def channel_name(subject: str) -> str:
    where = channel_of(subject)
    return where[0] if where else ""


class Integrity:
    def __init__(self, replica: Replica, chatlog: ChatLog, confirm: float) -> None:
        self._replica = replica
        self._chatlog = chatlog
        self._ends = Suspicion("the replica", confirm)
        self._records = Suspicion("a record", confirm)
        self._rule = Suspicion("the rule", confirm)
        self.audits = 0
        """Audits done: how tests know that checks ran and found nothing."""

    @property
    def suspicious(self) -> bool:
        return self._records.seq is not None

    def forget(self) -> None:
        """A rebuild starts from the log: nothing is suspected any more."""
        self._ends.observe(None)
        self._records.observe(None)
        self._rule.observe(None)

    def check_rule(self, max_text: int) -> None:
        """The log's text limit (in its metadata) is part of the rule every replica applies:
        if an operator changed it, what this replica holds was taken by another rule."""
        held = self._replica.max_text
        problem = None
        if max_text != held:
            problem = f"the log's text limit is now {max_text}, this replica applied {held}"
        self._rule.observe(problem)

    def check_ends(self, info: LogInfo, applied: int, count: int) -> None:
        """``applied`` and ``count`` (entries applied) were read before ``info`` was asked
        for: the log only grows, so a stream that is behind that position, or holds fewer
        entries up to it than were applied, has lost entries (deleted, purged, or a
        different store)."""
        problem = None
        at_most = info.messages - (info.last_seq - applied)
        if applied > info.last_seq:
            problem = f"holds seq {applied}, but the log ends at seq {info.last_seq}"
        elif count > at_most or (applied == info.last_seq and count != info.messages):
            problem = (
                f"applied {count} entries up to seq {applied}, the log holds {at_most} "
                "up to there: entries were deleted or purged"
            )
        self._ends.observe(problem)

    async def audit(self) -> None:
        """Compare one held record (random, or the one under suspicion) and the newest with
        the log's own entry at its seq. Only records the replica holds are looked at: seqs
        the log no longer has and the replica does not serve either are no difference."""
        self.audits += 1
        replica = self._replica
        applied = replica.applied
        looked = self._records.seq or self._random_held()
        for held in (looked, replica.newest):
            if held is None:
                continue
            seq, channel = held
            entry = await self._chatlog.entry_at(seq)
            if replica.applied < applied or replica.epoch is None:
                return  # rebuilt meanwhile
            problem = self._compare(seq, channel, entry)
            self._records.observe(problem, held if problem else None)
            if problem is not None:
                return

    def _random_held(self) -> tuple[int, str] | None:
        channels = self._replica.channels
        if not channels:
            return None
        name = random.choice(list(channels))
        seqs = channels[name].seqs
        return (seqs[random.randrange(len(seqs))], name) if seqs else None

    def _compare(self, seq: int, channel: str, entry: LogEntry | None) -> str | None:
        replica = self._replica
        held = replica.record_at(channel, seq)
        if held is None:
            return None  # trimmed (a bounded node) or replaced by a rebuild meanwhile
        if entry is None:
            return f"seq {seq} is served here but not in the log"
        taken = take(entry, replica.max_text)
        if not isinstance(taken, Record):
            return f"seq {seq} is served here but skipped by the log's rule"
        if held != encode_record(taken).decode():
            return f"seq {seq} differs from the log's"
        return None
