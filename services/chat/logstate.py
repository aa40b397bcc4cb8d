"""What a node knows about the log itself (not its messages): the stream's last state as
the watchdog saw it, whether it exists and means what we expect, whether sends are
refused because it is full, and whether it has stopped storing altogether.

The follower updates it every second; the writer notes each send's outcome. /readyz
and /metrics read it.
"""

import logging
import time

from chatlog import LogInfo

log = logging.getLogger("chat.logstate")

NO_ROOM = 1024
"""Bytes left in the log below which a send of even a short message is refused."""
STALL_AFTER = 3
"""Sends in a row that got no answer from the log while NATS was connected: the log has
stopped storing (measured: a nats-server whose disk is full answers nothing, so every
send would wait out the whole publish timeout; docs/full-disk.md)."""
PROBE_EVERY = 5.0
"""Seconds between the sends let through to find out whether a stalled log stores again."""


class LogState:
    def __init__(self) -> None:
        self.info: LogInfo | None = None
        self.stream_ok = False
        """The stream exists and means what we expect, as last checked."""
        self._full_at_limit: int | None = None
        """The byte limit the log had when a send was refused as full."""
        self.unanswered = 0
        """Sends in a row the log did not answer while NATS was connected."""
        self.stalled_since: float | None = None
        self._next_probe = 0.0

    def refused_as_full(self) -> None:
        self._full_at_limit = self.info.max_bytes if self.info is not None else -1

    def stored(self) -> None:
        if self.stalled_since is not None:
            log.warning("the log stores again, after %.0fs", time.monotonic() - self.stalled_since)
        self._full_at_limit = None
        self.unanswered = 0
        self.stalled_since = None

    def unanswered_send(self) -> None:
        self.unanswered += 1
        if self.unanswered == STALL_AFTER:
            self.stalled_since = time.monotonic()
            self._next_probe = self.stalled_since + PROBE_EVERY
            log.error(
                "the log has answered none of the last %d sends although NATS is connected "
                "(a server whose disk is full does that): answering sends 503 log_stalled "
                "at once, trying one every %.0fs",
                STALL_AFTER, PROBE_EVERY,
            )  # fmt: skip

    def may_send(self) -> bool:
        """False while the log is stalled, except for one send every PROBE_EVERY seconds,
        which finds out whether it stores again."""
        if self.stalled_since is None:
            return True
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + PROBE_EVERY
            return True
        return False

    @property
    def stalled(self) -> bool:
        return self.stalled_since is not None

    @property
    def full(self) -> bool:
        """A send was refused as full, and the limit has not been raised since (writes
        work again by themselves as soon as it is); or, as the watchdog last saw the log,
        not even a small message would fit (another node's sends are being refused)."""
        info = self.info
        if info is not None and 0 < info.max_bytes and info.max_bytes - info.bytes < NO_ROOM:
            return True
        if self._full_at_limit is None:
            return False
        return info is None or info.max_bytes <= self._full_at_limit

    @property
    def usage(self) -> float:
        return self.info.usage if self.info is not None else 0.0

    @property
    def append_only(self) -> bool:
        return self.info is not None and self.info.append_only
