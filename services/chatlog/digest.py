"""A running digest of the log's entries, identical on every replica that applied the same
entries, so that nodes and the log itself can be compared at any seq (``chat-cluster
verify``, ``/readyz``).

Entries are hashed in blocks of :data:`BLOCK` entries (counted, not by seq): a replica
keeps the entries of the block in progress, and when it is full hashes them field by
field (a handful of C-level joins, not per-entry Python work: this keeps the digest
off the apply rate), and chains it: ``chain = SHA-256(chain || block digest)``. The
digest at the newest entry is ``SHA-256(chain || digest of the block so far ||
count)``. A snapshot is taken at a block boundary, where the whole state is two
values (``count``, ``chain``).
"""

import hashlib
import sys
from array import array
from collections.abc import Iterable, Sequence

from chatlog.records import LogEntry

BLOCK = 1024
ZERO = bytes(32)


def _int64s(values: list[int]) -> bytes:
    packed = array("q", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def block_digest(entries: Sequence[LogEntry]) -> bytes:
    """What the digest covers of each entry: seq, stored time, subject, id and data."""
    digest = hashlib.sha256()
    digest.update(_int64s([e.seq for e in entries]))
    digest.update(_int64s([e.stored_ns for e in entries]))
    digest.update(_int64s([len(e.data) for e in entries]))  # where each datum ends
    # Neither a subject nor a Nats-Msg-Id can contain a newline.
    digest.update("\n".join([e.subject for e in entries]).encode() + b"\0")
    digest.update("\n".join([e.msg_id or "" for e in entries]).encode() + b"\0")
    digest.update(b"".join([e.data for e in entries]))
    return digest.digest()


class Digest:
    __slots__ = ("block", "chain", "count")

    def __init__(self, count: int = 0, chain: bytes = ZERO) -> None:
        if count % BLOCK:
            raise ValueError("a digest starts at a block boundary")
        self.count = count
        self.chain = chain
        self.block: list[LogEntry] = []
        """The entries of the block in progress."""

    def close_block(self) -> None:
        self.chain = hashlib.sha256(self.chain + block_digest(self.block)).digest()
        self.block = []

    def hexdigest(self, max_text: int) -> str:
        """The digest at the newest entry added, under the log's text limit (the one
        parameter of the rule that turns entries into records: two replicas that apply
        the same entries by different limits serve different records)."""
        tail = block_digest(self.block)
        counts = self.count.to_bytes(8, "little") + max_text.to_bytes(8, "little")
        return hashlib.sha256(self.chain + tail + counts).hexdigest()


def add(digest: Digest, entry: LogEntry) -> bool:
    """One entry, as a replica adds it. True when it closed a block."""
    digest.block.append(entry)
    digest.count += 1
    if digest.count % BLOCK == 0:
        digest.close_block()
        return True
    return False


def digest_of(entries: Iterable[LogEntry]) -> Digest:
    """The digest of a run of entries from the start of the log."""
    digest = Digest()
    for entry in entries:
        add(digest, entry)
    return digest
