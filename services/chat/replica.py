"""The node's in-memory copy of the log, and who is listening to which channel.

Everything here runs on the event loop without awaiting, so a reader that
takes a snapshot and registers for live messages in one call can neither miss
nor repeat a message: that is how joins avoid the seed's history/live race.
"""

import asyncio
import logging
from array import array
from bisect import bisect_right
from collections import Counter
from typing import Protocol

from chat.wire import message_frame
from chatlog import LogEntry, Record, take
from chatlog.records import channel_json, compact_record, expand_record

log = logging.getLogger("chat.replica")


class Listener(Protocol):
    def push(self, channel: str, seq: int, frame: str) -> None:
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

    def seq_before_last(self, n: int) -> int:
        """The seq to read ``after`` so that the last ``n`` records follow."""
        return self.seqs[-n - 1] if len(self.seqs) > n else self.dropped_through

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0


class Replica:
    def __init__(self, default_max_text: int, keep_per_channel: int | None = None) -> None:
        self.keep = keep_per_channel
        self.epoch: str | None = None
        self.applied = 0
        self.max_text = default_max_text
        self.channels: dict[str, ChannelLog] = {}
        self.skipped: Counter[str] = Counter()
        self.applied_total = 0
        self.rebuilds = 0
        """Epoch changes after the first: each one dropped everything and started over."""
        self.last_stored_ns = 0
        """stored_at of the newest applied entry: how far behind the log's head we are."""
        self._listeners: dict[str, set[Listener]] = {}
        self._progress = asyncio.Event()

    def reset(self, epoch: str, max_text: int) -> None:
        """Start over for a new log. Listeners are told, then dropped."""
        if self.epoch is not None:
            self.rebuilds += 1
            log.warning(
                "epoch changed from %s to %s: rebuilding from nothing",
                self.epoch, epoch, extra={"epoch": epoch},
            )  # fmt: skip
        self.epoch = epoch
        self.applied = 0
        self.max_text = max_text
        self.channels = {}
        # Counts of this log, like everything else here (a snapshot carries them): their
        # counters restart with a rebuild, which Prometheus reads as a counter reset.
        self.skipped = Counter()
        self.applied_total = 0
        self.last_stored_ns = 0
        listeners = {listener for group in self._listeners.values() for listener in group}
        self._listeners = {}
        for listener in listeners:
            listener.reset()
        self._wake()

    def apply(self, entries: list[LogEntry]) -> None:
        """Apply entries in order. Each seq is applied at most once: the tail starts at
        applied+1 and checks its own order, so a seq at or below ``applied`` means a bug
        upstream, and we refuse it rather than serve it twice."""
        for entry in entries:
            if entry.seq <= self.applied:
                log.error("refused seq %d: already applied up to %d", entry.seq, self.applied)
                continue
            taken = take(entry, self.max_text)
            self.applied = entry.seq
            if not isinstance(taken, Record):
                self.skipped[taken.reason] += 1
                log.warning(
                    "skipped seq %d (%s): %s",
                    taken.seq, taken.reason, taken.detail,
                    extra={"seq": taken.seq, "reason": taken.reason},
                )  # fmt: skip
                continue
            self.applied_total += 1
            fields, stored_us = compact_record(taken)
            channel = self.channels.get(taken.channel)
            if channel is None:
                channel = self.channels[taken.channel] = ChannelLog(taken.channel)
            channel.append(taken.seq, fields, stored_us, self.keep)
            listeners = self._listeners.get(taken.channel)
            if listeners:
                frame = message_frame(channel.record_json(-1))
                for listener in tuple(listeners):
                    listener.push(taken.channel, taken.seq, frame)
        if entries:
            self.last_stored_ns = entries[-1].stored_ns
            self._wake()

    def read(self, channel: str, after: int, limit: int) -> list[tuple[int, str]]:
        found = self.channels.get(channel)
        return found.after(after, limit) if found else []

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

    def _wake(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()
