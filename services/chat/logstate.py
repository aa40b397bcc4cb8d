"""What a node knows about the log itself (not its messages): the stream's last state as
the watchdog saw it, and whether sends are being refused because the log is full.

The follower updates it every second; the writer notes a send refused as full and
the next one that succeeds. /readyz and /metrics read it.
"""

from chatlog import LogInfo

NO_ROOM = 1024
"""Bytes left in the log below which a send of even a short message is refused."""


class LogState:
    def __init__(self) -> None:
        self.info: LogInfo | None = None
        self._full_at_limit: int | None = None
        """The byte limit the log had when a send was refused as full."""

    def refused_as_full(self) -> None:
        self._full_at_limit = self.info.max_bytes if self.info is not None else -1

    def stored(self) -> None:
        self._full_at_limit = None

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
