"""Replica snapshots in a JetStream object store: how a new node skips most of the replay.

There is one object, overwritten by whichever node saves last. Its description
carries the epoch and seq it covers, so a reader decides from a small metadata
message whether the (large) body is worth downloading. A snapshot is an
optimisation only: any failure here means "replay from the log", never wrong state.
"""

import asyncio
import logging
import zlib

import msgspec
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.object_store import ObjectStore

from chatlog.errors import LogRejected

log = logging.getLogger("chatlog.snapshots")

BUCKET = "CHAT_SNAPSHOTS"
OBJECT = "replica"


class SnapshotMeta(msgspec.Struct, frozen=True):
    """What a snapshot covers: the state after applying every seq up to ``seq`` of ``epoch``."""

    epoch: str
    seq: int
    format: int


_meta_decoder = msgspec.json.Decoder(SnapshotMeta)
_meta_encoder = msgspec.json.Encoder()


class SnapshotStore:
    def __init__(self, js: JetStreamContext, replicas: int) -> None:
        self._js = js
        self._replicas = replicas
        self._bucket: ObjectStore | None = None

    async def _store(self) -> ObjectStore:
        if self._bucket is None:
            try:
                self._bucket = await self._js.object_store(BUCKET)
            except nats.js.errors.NotFoundError:
                # Concurrent creates with the same config are accepted by JetStream.
                self._bucket = await self._js.create_object_store(
                    BUCKET,
                    config=api.ObjectStoreConfig(
                        bucket=BUCKET,
                        description="chat-cluster replica snapshots",
                        storage=api.StorageType.FILE,
                        replicas=self._replicas,
                    ),
                )
        return self._bucket

    async def meta(self) -> SnapshotMeta | None:
        store = await self._store()
        try:
            info = await store.get_info(OBJECT)
        except nats.js.errors.ObjectNotFoundError:
            return None
        return _decode_meta(info.description)

    async def load(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot and its body, as it was given to :meth:`save`."""
        store = await self._store()
        sink = _Inflate()
        try:
            # nats-py hands each chunk to sink.write in a worker thread, in order; zlib
            # releases the GIL, so inflating overlaps with reading the next chunks.
            # (Without writeinto, nats-py grows the body with bytes += chunk: quadratic.)
            result = await store.get(OBJECT, writeinto=sink)  # type: ignore[arg-type]
            body = sink.finish()
        except nats.js.errors.ObjectNotFoundError:
            return None
        except (
            nats.js.errors.DigestMismatchError,
            nats.js.errors.BadObjectMetaError,
            zlib.error,
        ) as exc:
            # Most likely overwritten while we read it: its old chunks were purged under us.
            raise LogRejected(f"snapshot unreadable: {exc!r}") from exc
        meta = _decode_meta(result.info.description)
        return (meta, body) if meta is not None else None

    async def save(self, meta: SnapshotMeta, body: bytes) -> None:
        store = await self._store()
        # Level 1: most of the size for a fraction of the time, in a thread (zlib releases
        # the GIL) so the node keeps serving. Stored and replicated compressed.
        compressed = await asyncio.to_thread(zlib.compress, body, 1)
        await store.put(
            OBJECT,
            compressed,
            meta=api.ObjectMeta(
                name=OBJECT,
                description=_meta_encoder.encode(meta).decode(),
            ),
        )


class _Inflate:
    """A write-only sink that inflates a zlib stream as its chunks arrive."""

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj()
        self._parts: list[bytes] = []

    def write(self, chunk: bytes) -> int:
        self._parts.append(self._inflater.decompress(chunk))
        return len(chunk)

    def finish(self) -> bytes:
        self._parts.append(self._inflater.flush())
        if not self._inflater.eof:
            raise zlib.error("snapshot body ends before its zlib stream does")
        return b"".join(self._parts)


def _decode_meta(description: str | None) -> SnapshotMeta | None:
    if not description:
        return None
    try:
        return _meta_decoder.decode(description)
    except msgspec.DecodeError:
        log.warning("ignoring a snapshot with unreadable metadata: %r", description[:200])
        return None
