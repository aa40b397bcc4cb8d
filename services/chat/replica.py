"""The node's in-memory copy of the log, and who is listening to which channel.

Everything here runs on the event loop without awaiting, so a reader that
takes a snapshot and registers for live messages in one call can neither miss
nor repeat a message: that is how joins avoid the seed's history/live race.
"""

import asyncio
import logging
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from chat.wire import Frame, message_frame
from chatlog import LogEntry, Record, take
from chatlog import digest as digest_rules
from chatlog.digest import Digest
from chatlog.records import channel_json, compact_record, expand_record

log = logging.getLogger("chat.replica")


class Listener(Protocol):
    def push(self, channel: str, seq: int, frame: Frame) -> None:
        """Called once per applied message of a joined channel, in seq order."""

    def reset(self) -> None:
        """The log was replaced (new epoch): everything held is void."""


class ChannelLog:
    """One channel's newest records, ascending by seq, compact.

    A record is held as three parts: its seq and stored_at (microseconds) in arrays,
    and the JSON of its other fields; a read puts them back together into exactly the
    record's encoding. That costs about a microsecond per record read and saves about
    a third of the memory of holding every record's whole JSON.

    With a bound, the oldest records are dropped in chunks; ``dropped_through`` is the
    highest seq no longer held, and readers fetch anything at or below it from the log.
    """

    __slots__ = ("dropped_through", "fields", "json_name", "seqs", "stored_us", "total")

    def __init__(self, name: str) -> None:
        self.json_name = channel_json(name)
        self.seqs = array("q")
        self.stored_us = array("q")
        self.fields: list[bytes] = []
        self.dropped_through = 0
        self.total = 0

    def append(self, seq: int, fields: bytes, stored_us: int, keep: int | None) -> None:
        self.seqs.append(seq)
        self.stored_us.append(stored_us)
        self.fields.append(fields)
        self.total += 1
        if keep is not None and len(self.seqs) > keep + max(64, keep // 4):
            # Chunked, so the O(n) delete is paid once per keep/4 appends.
            self.trim(keep)

    def trim(self, keep: int) -> None:
        drop = len(self.seqs) - keep
        if drop > 0:
            self.dropped_through = self.seqs[drop - 1]
            del self.seqs[:drop]
            del self.stored_us[:drop]
            del self.fields[:drop]

    def record_json(self, index: int) -> str:
        return expand_record(
            self.seqs[index], self.json_name, self.fields[index], self.stored_us[index]
        )

    def after(self, after: int, limit: int) -> list[tuple[int, str]]:
        start = bisect_right(self.seqs, after)
        stop = min(start + limit, len(self.seqs))
        return [(self.seqs[i], self.record_json(i)) for i in range(start, stop)]

    def before(self, before: int, limit: int) -> list[tuple[int, str]]:
        stop = bisect_left(self.seqs, before)
        return [(self.seqs[i], self.record_json(i)) for i in range(max(0, stop - limit), stop)]

    def seq_before_last(self, n: int) -> int:
        """The seq to read ``after`` so that the last ``n`` records follow."""
        return self.seqs[-n - 1] if len(self.seqs) > n else self.dropped_through

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0


@dataclass(frozen=True)
class Checkpoint:
    """The replica's counters at the newest digest block boundary: where a snapshot is
    taken, so that it carries the digest state exactly (see :mod:`chatlog.digest`)."""

    seq: int
    count: int
    chain: bytes
    applied_total: int
    skipped: dict[str, int]


class Replica:
    def __init__(self, default_max_text: int, keep_per_channel: int | None = None) -> None:
        self.keep = keep_per_channel
        self.epoch: str | None = None
        self.applied = 0
        self.max_text = default_max_text
        self.channels: dict[str, ChannelLog] = {}
        self.skipped: Counter[str] = Counter()
        self.applied_total = 0
        self.rebuilds: Counter[str] = Counter()
        """Rebuilds after the first bootstrap, by reason (a new epoch; a replica that no
        longer equals the log): each one dropped everything and started over."""
        self.digest = Digest()
        """Of every entry applied this epoch (records and skipped ones alike)."""
        self.checkpoint = Checkpoint(0, 0, self.digest.chain, 0, {})
        self.last_stored_ns = 0
        """stored_at of the newest applied entry: how far behind the log's head we are."""
        self.newest: tuple[int, str] | None = None
        """(seq, channel) of the newest record held."""
        self._listeners: dict[str, set[Listener]] = {}
        self._progress = asyncio.Event()
        self.waiting = 0
        """Reads waiting for a seq (``min_seq``) right now."""

    def reset(self, epoch: str, max_text: int, reason: str = "epoch") -> None:
        """Start over (a new log, or this one from scratch). Listeners are told, then
        dropped."""
        if self.epoch is not None:
            self.rebuilds[reason] += 1
            log.warning(
                "rebuilding from nothing (%s): epoch %s -> %s",
                reason, self.epoch, epoch, extra={"epoch": epoch, "reason": reason},
            )  # fmt: skip
        self.epoch = epoch
        self.applied = 0
        self.max_text = max_text
        self.channels = {}
        # Counts of this log, like everything else here (a snapshot carries them): their
        # counters restart with a rebuild, which Prometheus reads as a counter reset.
        self.skipped = Counter()
        self.applied_total = 0
        self.digest = Digest()
        self.checkpoint = Checkpoint(0, 0, self.digest.chain, 0, {})
        self.last_stored_ns = 0
        self.newest = None
        listeners = {listener for group in self._listeners.values() for listener in group}
        self._listeners = {}
        for listener in listeners:
            listener.reset()
        self._wake()

    def apply(self, entries: list[LogEntry]) -> None:
        """Apply entries in order. Each seq is applied at most once: the tail starts at
        applied+1 and checks its own order, so a seq at or below ``applied`` means a bug
        upstream, and we refuse it rather than serve it twice."""
        digest = self.digest
        block = digest_rules.BLOCK
        for entry in entries:
            if entry.seq <= self.applied:
                log.error("refused seq %d: already applied up to %d", entry.seq, self.applied)
                continue
            digest.block.append(entry)
            digest.count += 1
            taken = take(entry, self.max_text)
            self.applied = entry.seq
            if isinstance(taken, Record):
                self._add(taken)
            else:
                self.skipped[taken.reason] += 1
                log.warning(
                    "skipped seq %d (%s): %s",
                    taken.seq, taken.reason, taken.detail,
                    extra={"seq": taken.seq, "reason": taken.reason},
                )  # fmt: skip
            if digest.count % block == 0:
                digest.close_block()
                self.checkpoint = Checkpoint(
                    entry.seq, digest.count, digest.chain, self.applied_total, dict(self.skipped)
                )
        if entries:
            self.last_stored_ns = entries[-1].stored_ns
            self._wake()

    def advance(self, seq: int) -> None:
        """Every seq up to ``seq`` is reflected: those above ``applied`` do not exist."""
        if seq > self.applied:
            self.applied = seq
            self._wake()

    def position(self) -> Checkpoint:
        """Where the replica is now, as a checkpoint; ``chain`` is that of the last closed
        block, so only at a block boundary does it carry the whole digest."""
        digest = self.digest
        return Checkpoint(
            self.applied, digest.count, digest.chain, self.applied_total, dict(self.skipped)
        )

    def _add(self, taken: Record) -> None:
        self.applied_total += 1
        fields, stored_us = compact_record(taken)
        channel = self.channels.get(taken.channel)
        if channel is None:
            channel = self.channels[taken.channel] = ChannelLog(taken.channel)
        channel.append(taken.seq, fields, stored_us, self.keep)
        self.newest = (taken.seq, taken.channel)
        listeners = self._listeners.get(taken.channel)
        if listeners:
            frame = Frame(message_frame(channel.record_json(-1)))  # once for every socket
            for listener in tuple(listeners):
                listener.push(taken.channel, taken.seq, frame)

    def record_at(self, channel: str, seq: int) -> str | None:
        """The record this replica holds at ``seq`` in ``channel``, as it would serve it."""
        found = self.channels.get(channel)
        if found is None:
            return None
        index = bisect_right(found.seqs, seq) - 1
        if index < 0 or found.seqs[index] != seq:
            return None
        return found.record_json(index)

    def holds(self, channel: str, seq: int) -> bool:
        """False when ``seq`` of ``channel`` is older than what a bounded node keeps."""
        return seq > self.dropped_through(channel)

    def read(self, channel: str, after: int, limit: int) -> list[tuple[int, str]]:
        found = self.channels.get(channel)
        return found.after(after, limit) if found else []

    def read_before(self, channel: str, before: int, limit: int) -> list[tuple[int, str]]:
        found = self.channels.get(channel)
        return found.before(before, limit) if found else []

    def dropped_through(self, channel: str) -> int:
        """Records of ``channel`` at or below this seq are only in the log, not here."""
        found = self.channels.get(channel)
        return found.dropped_through if found else 0

    def default_after(self, channel: str, last_n: int) -> int:
        found = self.channels.get(channel)
        return found.seq_before_last(last_n) if found else 0

    def listener_count(self, channel: str) -> int:
        return len(self._listeners.get(channel, ()))

    def listen(self, channel: str, listener: Listener) -> None:
        self._listeners.setdefault(channel, set()).add(listener)

    def unlisten(self, channel: str, listener: Listener) -> None:
        group = self._listeners.get(channel)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._listeners[channel]

    async def wait_applied(self, seq: int, timeout: float) -> bool:
        """Wait until ``seq`` is applied (read-your-writes); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting += 1
        try:
            while self.applied < seq:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    async with asyncio.timeout(remaining):
                        await self._progress.wait()
                except TimeoutError:
                    return False
            return True
        finally:
            self.waiting -= 1

    def _wake(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()
