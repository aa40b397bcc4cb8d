"""Keeps the replica equal to the log: bootstrap, live apply, watchdog, epoch changes.

Bootstrap and live delivery are one ordered consumer from applied+1 (DeliverAll
on a fresh replica), so there is no hand-over between "history" and "live"
where a message could fall through. Whatever goes wrong (NATS restart, gap,
stall, deleted stream) ends the same way: close the consumer, check the
epoch, and start a new one from applied+1.

Every second the watchdog also checks that the log still holds everything the
replica applied (no seq beyond the log's end, no fewer entries than applied), and
every few seconds it compares one random held record and the newest with the
log's own. A replica that fails either is rebuilt from the log alone (Diverged).
"""

import asyncio
import logging
import random
import time
from collections import Counter

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from chat import snapshot
from chat.logstate import LogState
from chat.replica import Replica
from chat.settings import NodeSettings
from chatlog import ChatLog, LogEntry, LogError, LogInfo, Record, Tail, TailBroken, take
from chatlog.names import channel_of
from chatlog.records import encode_record
from chatlog.retry import FOLLOW, SERVICE, Backoff, retry
from telemetry import context_of

log = logging.getLogger("chat.follower")

tracer = trace.get_tracer("chat")

RECONNECT_AFTER = 3
"""Consecutive consumer resets without progress before we try another NATS server."""


class Diverged(TailBroken):
    """The replica holds something the log does not: it must be rebuilt from the log."""

    code = "diverged"


class Suspicion:
    """A difference from the log is acted on only once it has been seen for ``confirm``
    seconds. Right after a partition a server that has not yet learnt it lost its
    leadership can answer with an older state of the stream for a moment; a log that
    really lost entries stays that way."""

    def __init__(self, what: str, confirm: float) -> None:
        self._what = what
        self._confirm = confirm
        self._since: float | None = None
        self.seq: int | None = None
        """The seq to look at again, for a suspicion about one record."""

    def observe(self, problem: str | None, seq: int | None = None) -> None:
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


class Follower:
    """The owner of the replica's state: applies the log to it, for as long as it runs."""

    def __init__(
        self, settings: NodeSettings, replica: Replica, chatlog: ChatLog, log_state: LogState
    ) -> None:
        self._settings = settings
        self._replica = replica
        self._chatlog = chatlog
        self._log_state = log_state
        self._rebuild: str | None = None
        self._ends = Suspicion("the replica", settings.diverge_after)
        self._records = Suspicion("a record", settings.diverge_after)
        self.snapshot_rejections: Counter[str] = Counter()
        """Snapshots not trusted at bootstrap, by reason (then the node replayed the log)."""
        self.alive = False
        """True while ``run`` runs: a node whose follower has ended serves a frozen replica
        and must not say it is ready."""
        self.target = 0
        """The stream's last seq when the current epoch was bootstrapped: readiness."""
        self.resets = 0
        self.stream_last_seq = 0
        """The stream's last seq as last seen (bootstrap, then the watchdog every second)."""
        self.snapshot_seq = 0
        """The seq of the snapshot the current epoch started from; 0 for a full replay."""

    @property
    def connected(self) -> bool:
        return self._chatlog.connected

    @property
    def ready(self) -> bool:
        """Connected, caught up with the stream once, and still following it."""
        return (
            self.alive
            and self.connected
            and self._replica.epoch is not None
            and self._replica.applied >= self.target
        )

    async def run(self) -> None:
        """The owner task: runs until cancelled."""
        self.alive = True
        try:
            await retry(self._chatlog.connect, SERVICE, "connect to NATS")
            await self._follow_for_ever()
        finally:
            self.alive = False

    async def _follow_for_ever(self) -> None:
        backoff = Backoff(FOLLOW)
        failures = 0
        while True:
            applied = self._replica.applied
            try:
                await self._bootstrap_and_follow()  # returns only by raising
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, Diverged):
                    # Not a glitch: what we serve is not the log. Start over from the log.
                    log.error("replica differs from the log: %s; rebuilding it", exc.detail)
                    self._rebuild = "diverged"
                elif not isinstance(exc, LogError):
                    # Not expected, so say everything about it; then do what is always
                    # safe: start again from applied+1. A follower that died here would
                    # leave the node serving a frozen replica.
                    log.exception("unexpected error while following the log")
                self.resets += 1
                progressed = self._replica.applied > applied
                failures = 1 if progressed else failures + 1
                if progressed:
                    backoff.reset()  # a tail that worked for a while earns a quick retry
                log.warning(
                    "consumer reset (%s); resuming from seq %d",
                    exc, self._replica.applied + 1,
                    extra={"seq": self._replica.applied + 1, "reason": type(exc).__name__},
                )  # fmt: skip
                if failures >= RECONNECT_AFTER:
                    # The server we are attached to may be the one that is cut off, or still
                    # catching up after a partition (it answers, but JetStream is unavailable
                    # there). A new connection picks a server at random.
                    log.warning("%d consumer resets in a row: reconnecting", RECONNECT_AFTER)
                    await retry(self._chatlog.reconnect, SERVICE, "reconnect to NATS")
                    failures = 0
                await backoff.wait()

    async def _bootstrap_and_follow(self) -> None:
        # Every (re)start checks the stream: a stream with a new creation time is a new log
        # that replaces everything we hold, and a replica that was found to differ from
        # the log is rebuilt from the log alone (a snapshot may be what differed).
        info = await self._chatlog.check_stream()
        self._observe(info)
        rebuild, self._rebuild = self._rebuild, None
        if info.epoch != self._replica.epoch or rebuild is not None:
            self._ends.observe(None)
            self._records.observe(None)
            loaded = None
            if rebuild is None:
                loaded = await snapshot.fetch(self._chatlog, info, self.snapshot_rejections)
            # Fetched before the reset: reset and restore then happen with no await between
            # them, so a WebSocket cannot join the new epoch half-way through the restore.
            self._replica.reset(info.epoch, info.max_text, rebuild or "epoch")
            self.snapshot_seq = 0
            if loaded is not None:
                snapshot.restore(self._replica, *loaded)
                self.snapshot_seq = loaded[0].seq
                del loaded  # the decoded blobs: hundreds of MB on a long log
                snapshot.give_back_memory()
            self.target = info.last_seq
            log.info(
                "bootstrapping epoch %s up to seq %d from seq %d",
                info.epoch, info.last_seq, self._replica.applied + 1,
                extra={"seq": self._replica.applied + 1, "epoch": info.epoch},
            )  # fmt: skip
        reconnects = self._chatlog.reconnects
        async with self._chatlog.tail(self._replica.applied + 1, self._settings.heartbeat) as tail:
            await self._follow(tail, reconnects)

    async def refresh(self) -> LogInfo:
        """Look at the stream now: its last seq is what the lag metrics compare with."""
        info = await self._chatlog.info()
        self._observe(info)
        return info

    def _observe(self, info: LogInfo) -> None:
        self.stream_last_seq = info.last_seq
        self._log_state.info = info

    async def _check_equal(self) -> None:
        """Raise Diverged when this replica holds what the log does not.

        The replica's position is read before asking the stream: the log only grows,
        so a stream that is behind that position, or holds fewer entries up to it than
        were applied, has lost entries (deleted, purged, or a different store)."""
        replica = self._replica
        applied, count = replica.applied, replica.digest.count
        info = await self.refresh()
        if info.epoch != replica.epoch:
            raise TailBroken(f"stream has a new epoch {info.epoch}")
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

    async def _audit(self) -> None:
        """Compare one held seq (random, or the one under suspicion), and the newest, with
        the log's own entry."""
        replica = self._replica
        applied = replica.applied
        if applied == 0:
            return
        looked = self._records.seq or random.randint(1, applied)
        for seq in (looked, applied):
            entry = await self._chatlog.entry_at(seq)
            if replica.applied < applied or replica.epoch is None:
                return  # rebuilt meanwhile
            problem = self._compare(seq, entry)
            if problem is not None or seq == applied:
                self._records.observe(problem, seq)
                if problem is not None:
                    return

    def _compare(self, seq: int, entry: LogEntry | None) -> str | None:
        replica = self._replica
        if entry is None:
            return f"seq {seq} is applied here but not in the log"
        taken = take(entry, replica.max_text)
        if isinstance(taken, Record):
            if replica.holds(taken.channel, seq):
                if replica.record_at(taken.channel, seq) != encode_record(taken).decode():
                    return f"seq {seq} differs from the log's"
        elif replica.record_at(channel_name(entry.subject), seq) is not None:
            return f"seq {seq} is skipped by the log's rule but served here"
        return None

    def _trace(self, entries: list[LogEntry], started: int) -> None:
        """An apply span (and a delivery span) per message that came with a traceparent,
        as a child of the sender's publish span; the batch's apply time is theirs."""
        ended = None
        for entry in entries:
            if entry.trace_parent is None:
                continue
            ended = ended or time.time_ns()
            channel = channel_name(entry.subject)
            apply = tracer.start_span(
                "chat.apply",
                context=context_of(entry.trace_parent),
                kind=SpanKind.CONSUMER,
                start_time=started,
                attributes={
                    "messaging.system": "nats",
                    "chat.node_id": self._settings.node_id,
                    "chat.seq": entry.seq,
                    "chat.channel": channel,
                },
            )
            deliver = tracer.start_span(
                "chat.deliver",
                context=trace.set_span_in_context(apply),
                start_time=started,
                attributes={
                    "chat.node_id": self._settings.node_id,
                    "chat.ws.recipients": self._replica.listener_count(channel),
                },
            )
            deliver.end(end_time=ended)
            apply.end(end_time=ended)

    async def _follow(self, tail: Tail, reconnects: int) -> None:
        settings = self._settings
        was_ready = self.ready
        now = time.monotonic()
        last_progress = now
        next_check = now + settings.watchdog_interval
        next_audit = now + settings.audit_interval
        while True:
            entries = await tail.batch(max_wait=settings.watchdog_interval / 2)
            now = time.monotonic()
            if entries:
                started = time.time_ns()
                self._replica.apply(entries)
                if was_ready:
                    # Live messages only: replaying a long log would emit two spans for
                    # every stored message that once carried a traceparent.
                    self._trace(entries, started)
                last_progress = now
                # Let WebSocket senders drain what this batch queued before the next one.
                await asyncio.sleep(0)
            if tail.position > self._replica.applied:
                # Seqs that no longer exist (deleted or purged from a log that is not
                # append-only): nothing to apply, and nothing missing.
                self._replica.advance(tail.position)
            if not was_ready and self.ready:
                was_ready = True
                log.info(
                    "caught up: seq %d of epoch %s",
                    self._replica.applied, self._replica.epoch,
                    extra={"seq": self._replica.applied, "epoch": self._replica.epoch},
                )  # fmt: skip
            if self._chatlog.reconnects != reconnects:
                # The consumer may not have survived the reconnection: start a new one.
                raise TailBroken("reconnected to NATS")
            if now >= next_audit:
                # Sooner while a record is under suspicion: confirm or clear it quickly.
                next_audit = now + (
                    settings.watchdog_interval if self._records.seq else settings.audit_interval
                )
                await self._audit()
            if now >= next_check:
                next_check = now + settings.watchdog_interval
                await self._check_equal()
                info = self._log_state.info
                assert info is not None
                behind = info.last_seq > self._replica.applied
                if behind and now - last_progress > settings.stall_after:
                    raise TailBroken(
                        f"stalled at seq {self._replica.applied}; stream is at {info.last_seq}"
                    )
                if not behind:
                    last_progress = now
