"""A running digest of the log's entries, identical on every replica that applied the same
entries, so that nodes and the log itself can be compared at any seq (``chat-cluster
verify``, ``/readyz``).

Entries are hashed in blocks of :data:`BLOCK` entries (counted, not by seq): a block's
bytes are fed to one SHA-256 as they are applied, however they were batched, and a
closed block is chained into ``chain = SHA-256(chain || block digest)``. The digest at
the newest entry is ``SHA-256(chain || current block's digest || count)``. A snapshot
is taken at a block boundary, where the whole state is two values (``count``, ``chain``).
"""

import hashlib
import struct
from collections.abc import Iterable

from chatlog.records import LogEntry

BLOCK = 1024
ZERO = bytes(32)

_HEADER = struct.Struct("<QQI")


def entry_bytes(entry: LogEntry) -> bytes:
    """What the digest covers of one entry: seq, stored time, subject, id and data."""
    head = f"{entry.subject}\n{entry.msg_id or ''}\n".encode()
    return _HEADER.pack(entry.seq, entry.stored_ns, len(entry.data)) + head + entry.data


class Digest:
    __slots__ = ("_block", "chain", "count")

    def __init__(self, count: int = 0, chain: bytes = ZERO) -> None:
        if count % BLOCK:
            raise ValueError("a digest starts at a block boundary")
        self.count = count
        self.chain = chain
        self._block = hashlib.sha256()

    def feed(self, parts: Iterable[bytes]) -> None:
        """Add entries' bytes (``entry_bytes``) that belong to the current block."""
        self._block.update(b"".join(parts))

    def close_block(self) -> None:
        self.chain = hashlib.sha256(self.chain + self._block.digest()).digest()
        self._block = hashlib.sha256()

    def hexdigest(self) -> str:
        """The digest at the newest entry fed."""
        tail = self._block.copy().digest()
        return hashlib.sha256(self.chain + tail + self.count.to_bytes(8, "little")).hexdigest()


def digest_of(entries: Iterable[LogEntry]) -> Digest:
    """The digest of a run of entries from the start of the log, as a replica computes it."""
    digest = Digest()
    for entry in entries:
        add(digest, entry)
    return digest


def add(digest: Digest, entry: LogEntry) -> bool:
    """One entry (the simple path, for tools; replicas batch the same bytes). True when
    it closed a block."""
    digest.feed((entry_bytes(entry),))
    digest.count += 1
    if digest.count % BLOCK == 0:
        digest.close_block()
        return True
    return False
