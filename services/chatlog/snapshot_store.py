"""Replica snapshots in the stream ``CHAT_SNAPSHOTS``: signed, so that only nodes can
write one that a node will trust.

A snapshot is its compressed body in chunks (``chatsnap.chunk.<id>.<n>``), then a
manifest (``chatsnap.manifest``, of which the stream keeps the newest) that says
what it covers, how many chunks it has, their SHA-256, and an HMAC over all of it
with a key derived from the node role's own secret. Anyone else (an admin, the
publisher role, a mistaken operator) can at most write a manifest that fails that
check, and then a node replays the log instead. Nobody deletes old snapshots: the
stream's byte limit evicts the oldest when a new one needs the room.
"""

import asyncio
import hashlib
import hmac
import logging
import secrets
import zlib

import msgspec

from chatlog.connection import Connection
from chatlog.errors import LogRejected
from chatlog.names import SNAPSHOT_CHUNKS, SNAPSHOT_MANIFEST, SNAPSHOT_STREAM
from chatlog.reads import direct_batch

log = logging.getLogger("chatlog.snapshots")

CHUNK = 256 * 1024
IN_FLIGHT = 16
"""Chunk publishes awaiting their PubAck at once."""


class SnapshotMeta(msgspec.Struct, frozen=True):
    """What a snapshot covers: the state after applying every seq up to ``seq`` of ``epoch``,
    and the log's digest there (``count`` entries, ``chain``; see :mod:`chatlog.digest`)."""

    epoch: str
    seq: int
    format: int
    count: int
    chain: str


class Manifest(msgspec.Struct, frozen=True):
    meta: SnapshotMeta
    id: str
    chunks: int
    size: int
    sha256: str
    sig: str = ""


class SnapshotRejected(LogRejected):
    """A snapshot that must not be trusted (bad signature, missing or altered chunks)."""

    code = "snapshot_rejected"


_encoder = msgspec.json.Encoder()
_manifest = msgspec.json.Decoder(Manifest)


def _signature(key: bytes, manifest: Manifest) -> str:
    unsigned = msgspec.structs.replace(manifest, sig="")
    return hmac.new(key, _encoder.encode(unsigned), hashlib.sha256).hexdigest()


class SnapshotStore:
    def __init__(self, conn: Connection, key: bytes) -> None:
        self._conn = conn
        self._key = key

    async def manifest(self) -> Manifest | None:
        """The newest snapshot's manifest, verified; None if there is none. Raises
        SnapshotRejected for one that was not signed with the node role's key."""
        entries, _ = await direct_batch(
            self._conn, SNAPSHOT_STREAM, {"last_by_subj": SNAPSHOT_MANIFEST}
        )
        if not entries:
            return None
        try:
            manifest = _manifest.decode(entries[-1].data)
        except msgspec.DecodeError as exc:
            raise SnapshotRejected(f"unreadable snapshot manifest: {exc}") from exc
        if not hmac.compare_digest(manifest.sig, _signature(self._key, manifest)):
            raise SnapshotRejected(
                f"snapshot of seq {manifest.meta.seq} is not signed by a node: ignored"
            )
        return manifest

    async def load(self, manifest: Manifest) -> bytes:
        """The body of the snapshot ``manifest`` describes, checked against it."""
        prefix = f"{SNAPSHOT_CHUNKS}.{manifest.id}."
        inflater = zlib.decompressobj()
        parts: list[bytes] = []
        sha = hashlib.sha256()
        size = index = 0
        cursor = 1
        while index < manifest.chunks:
            entries, _ = await direct_batch(
                self._conn,
                SNAPSHOT_STREAM,
                {"seq": cursor, "next_by_subj": prefix + "*", "batch": 16},
            )
            if not entries:
                break
            for entry in entries:
                if entry.subject != f"{prefix}{index}":
                    raise SnapshotRejected(
                        f"snapshot chunk {entry.subject} where {prefix}{index} was expected: "
                        "chunks missing, replaced or out of order"
                    )
                sha.update(entry.data)
                size += len(entry.data)
                # zlib releases the GIL: inflating in a thread keeps the node serving.
                parts.append(await asyncio.to_thread(inflater.decompress, entry.data))
                index += 1
                cursor = entry.seq + 1
        if index != manifest.chunks or size != manifest.size:
            raise SnapshotRejected(
                f"snapshot of seq {manifest.meta.seq}: {index} of {manifest.chunks} chunks "
                f"({size} of {manifest.size} bytes) found; evicted by newer ones, cut short, "
                "or replaced"
            )
        if sha.hexdigest() != manifest.sha256:
            raise SnapshotRejected(f"snapshot of seq {manifest.meta.seq}: chunks were altered")
        parts.append(inflater.flush())
        if not inflater.eof:
            raise SnapshotRejected("snapshot body ends before its zlib stream does")
        return b"".join(parts)

    async def save(self, meta: SnapshotMeta, body: bytes, timeout: float) -> None:
        # Level 1: most of the size for a fraction of the time, in a thread (zlib releases
        # the GIL) so the node keeps serving. Stored and replicated compressed.
        compressed = await asyncio.to_thread(zlib.compress, body, 1)
        snapshot_id = secrets.token_hex(8)
        js = self._conn.js_slow
        pending: set[asyncio.Future[object]] = set()
        chunks = 0
        for start in range(0, len(compressed), CHUNK):
            subject = f"{SNAPSHOT_CHUNKS}.{snapshot_id}.{chunks}"
            piece = compressed[start : start + CHUNK]
            # One connection keeps publish order, so chunks are stored in index order.
            pending.add(asyncio.ensure_future(js.publish(subject, piece, timeout=timeout)))
            chunks += 1
            if len(pending) >= IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    future.result()
        for future in asyncio.as_completed(pending):
            await future
        manifest = Manifest(
            meta=meta,
            id=snapshot_id,
            chunks=chunks,
            size=len(compressed),
            sha256=hashlib.sha256(compressed).hexdigest(),
        )
        signed = msgspec.structs.replace(manifest, sig=_signature(self._key, manifest))
        await js.publish(SNAPSHOT_MANIFEST, _encoder.encode(signed), timeout=timeout)
