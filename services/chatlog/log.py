"""``ChatLog``: the verbs services use (ensure, publish, info, tail, read, snapshots).

One ``ChatLog`` is created by each service at start and handed to every part that
needs the log. It owns its connection: ``connect`` and ``reconnect`` swap it inside,
so no caller ever holds a handle that may be gone. Until it is connected, every verb
raises LogUnavailable.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.js.errors
from nats.js import api

from chatlog.connection import Connection, boundary
from chatlog.errors import LogUnavailable
from chatlog.names import STREAM_NAME, SUBJECTS, channel_of, subject_for
from chatlog.reads import direct_batch, leader_get
from chatlog.records import LogEntry, Record, encode_record, take
from chatlog.settings import LogSettings
from chatlog.snapshot_store import SnapshotMeta, SnapshotStore
from chatlog.stream import max_text_of
from chatlog.tail import Tail

log = logging.getLogger("chatlog")

_STREAM_NAME_IN_USE = 10058


@dataclass(frozen=True)
class LogInfo:
    """The stream as it is now. ``epoch`` is its creation time: a new stream, a new log."""

    epoch: str
    first_seq: int
    last_seq: int
    messages: int
    max_text: int
    replicas: int


@dataclass(frozen=True)
class PubAck:
    seq: int
    duplicate: bool


@dataclass(frozen=True)
class ChannelStat:
    channel: str
    count: int
    last_seq: int


class ChatLog:
    """The log, as one service sees it. Create once; ``connect`` before use."""

    def __init__(self, settings: LogSettings, name: str) -> None:
        self.settings = settings
        self._name = name
        self._conn: Connection | None = None
        self._snapshots: SnapshotStore | None = None
        self._reconnects = 0

    @classmethod
    async def open(cls, settings: LogSettings, name: str) -> "ChatLog":
        """A connected ChatLog (LogUnavailable if NATS does not answer)."""
        chatlog = cls(settings, name)
        await chatlog.connect()
        return chatlog

    async def connect(self) -> None:
        """Connect, unless connected already. Raises LogUnavailable if no server answers;
        once connected, nats-py reconnects by itself for ever."""
        if self._conn is None:
            self._conn = await Connection.open(self.settings, self._name)
            self._snapshots = SnapshotStore(self._conn.js_slow, self.settings.stream.replicas)

    async def reconnect(self) -> None:
        """A new connection (to a server picked at random), then the old one is closed.
        Tails of the old connection end with TailBroken."""
        fresh = await Connection.open(self.settings, self._name)
        old, self._conn = self._conn, fresh
        self._snapshots = SnapshotStore(fresh.js_slow, self.settings.stream.replicas)
        self._reconnects += 1
        if old is not None:
            await old.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.connected

    @property
    def reconnects(self) -> int:
        """Reconnections so far (by nats-py or by ``reconnect``): a consumer started before
        one may be gone."""
        return self._reconnects + (self._conn.reconnects if self._conn is not None else 0)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _connection(self) -> Connection:
        if self._conn is None:
            raise LogUnavailable("not connected to NATS yet")
        return self._conn

    async def ensure_stream(self) -> LogInfo:
        """Create the stream, or check that the existing one is compatible. Idempotent and
        safe under concurrent starts: JetStream accepts a create with an identical
        config, and a racing create with another config surfaces as StreamConflict."""
        conn = self._connection()
        spec = self.settings.stream
        async with boundary("ensure stream"):
            try:
                info = await conn.js.stream_info(STREAM_NAME)
            except nats.js.errors.NotFoundError:
                try:
                    info = await conn.js.add_stream(spec.config())
                    log.info("created stream %s (replicas=%d)", STREAM_NAME, spec.replicas)
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code != _STREAM_NAME_IN_USE:
                        raise
                    info = await conn.js.stream_info(STREAM_NAME)
            spec.check(info.config)
            return self._info(info)

    async def info(self) -> LogInfo:
        """Raises LogUnavailable when NATS is down or the stream does not exist."""
        conn = self._connection()
        async with boundary("stream info"):
            try:
                return self._info(await conn.js.stream_info(STREAM_NAME))
            except nats.js.errors.NotFoundError as exc:
                raise LogUnavailable(f"stream {STREAM_NAME} does not exist") from exc

    def _info(self, info: api.StreamInfo) -> LogInfo:
        created = info.created or datetime(1970, 1, 1, tzinfo=UTC)
        return LogInfo(
            epoch=created.isoformat().replace("+00:00", "Z"),
            first_seq=info.state.first_seq,
            last_seq=info.state.last_seq,
            messages=info.state.messages,
            max_text=max_text_of(info.config, self.settings.stream.max_text),
            replicas=info.config.num_replicas or 1,
        )

    async def publish(
        self, channel: str, payload: bytes, msg_id: str, trace_parent: str | None = None
    ) -> PubAck:
        """Publish and wait for the PubAck: after it returns, the message is stored (and, with
        ``sync_interval: always``, on disk). The same ``msg_id`` within the duplicate window
        returns the first seq with ``duplicate=True``. LogUnavailable promises nothing.
        ``trace_parent`` travels in the message's headers to every replica."""
        subject = subject_for(channel)
        headers = {"Nats-Msg-Id": msg_id}
        if trace_parent:
            headers["traceparent"] = trace_parent
        conn = self._connection()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_timeout
        pause = 0.05
        async with boundary("publish"):
            while True:
                remaining = deadline - loop.time()
                try:
                    ack = await conn.js.publish(
                        subject,
                        payload,
                        timeout=max(remaining, 0.1),
                        stream=STREAM_NAME,
                        headers=headers,
                    )
                    break
                except nats.js.errors.NoStreamResponseError:
                    # "No responders": the stream has no leader this instant (an election
                    # after a server died). Retrying with the same Nats-Msg-Id is safe, and
                    # hides a short election from the client, as nats.go's publish retry does.
                    if loop.time() + pause >= deadline:
                        raise
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.5)
        return PubAck(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def publish_core(self, channel: str, payload: bytes) -> None:
        """A fire-and-forget core publish, exactly what ``nats pub`` does."""
        conn = self._connection()
        async with boundary("publish"):
            await conn.nc.publish(subject_for(channel), payload)
            await conn.nc.flush(timeout=max(1, int(self.settings.publish_timeout)))

    async def delete_stream(self) -> None:
        conn = self._connection()
        async with boundary("delete stream"):
            try:
                await conn.js.delete_stream(STREAM_NAME)
            except nats.js.errors.NotFoundError:
                pass

    def _store(self) -> SnapshotStore:
        self._connection()
        assert self._snapshots is not None
        return self._snapshots

    async def snapshot_meta(self) -> SnapshotMeta | None:
        async with boundary("snapshot info"):
            return await self._store().meta()

    async def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        async with boundary("snapshot load"):
            return await self._store().load()

    async def save_snapshot(self, meta: SnapshotMeta, body: bytes) -> None:
        async with boundary("snapshot save"):
            await self._store().save(meta, body)

    def tail(self, from_seq: int, heartbeat: float) -> Tail:
        """An ordered, gap-checked delivery of the stream from ``from_seq``."""
        conn = self._connection()
        return Tail(conn.nc, conn.js, from_seq, heartbeat, conn.api_timeout)

    async def page(self, channel: str, after: int, limit: int) -> tuple[list[LogEntry], int]:
        """Up to ``limit`` stored entries of ``channel`` with seq > ``after``, ascending, and the
        number still pending after them. Served by Direct Get, so no consumer is created."""
        request = {"seq": after + 1, "next_by_subj": subject_for(channel), "batch": limit}
        return await direct_batch(self._connection(), request)

    async def next_entry(self, channel: str, after: int) -> LogEntry | None:
        """The first entry of ``channel`` with seq > ``after``, answered by the stream leader."""
        request = {"seq": after + 1, "next_by_subj": subject_for(channel)}
        return await leader_get(self._connection(), request)

    async def read_records(
        self, channel: str, after: int, limit: int, max_text: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        """Up to ``limit`` records of ``channel`` with seq > ``after``, encoded exactly as every
        replica encodes them (poison passed over by the same rule), and the seq to continue
        after. A short Direct Get answer is confirmed with the leader (see next_entry)."""
        records: list[tuple[int, bytes]] = []
        cursor = after
        while len(records) < limit:
            wanted = limit - len(records)
            entries, pending = await self.page(channel, cursor, wanted)
            if len(entries) < wanted:
                tail = await self.next_entry(channel, entries[-1].seq if entries else cursor)
                if tail is not None:
                    entries.append(tail)
                    pending = 1
            for entry in entries:
                cursor = entry.seq
                taken = take(entry, max_text)
                if isinstance(taken, Record):
                    records.append((taken.seq, encode_record(taken)))
            if not entries or pending == 0:
                break
        return records, cursor

    async def channel_stats(self) -> list[ChannelStat]:
        """Count and last seq of every valid channel, from the stream's per-subject state."""
        conn = self._connection()
        async with boundary("stream info"):
            try:
                info = await conn.js.stream_info(STREAM_NAME, subjects_filter=SUBJECTS)
            except nats.js.errors.NotFoundError as exc:
                raise LogUnavailable(f"stream {STREAM_NAME} does not exist") from exc
        counts = {s: n for s, n in (info.state.subjects or {}).items() if channel_of(s)}
        if not counts:
            return []
        lasts, _ = await direct_batch(conn, {"multi_last": [SUBJECTS], "batch": len(counts)})
        last_by_subject = {e.subject: e.seq for e in lasts}
        return sorted(
            (
                ChannelStat(channel=channel_of(s) or s, count=n, last_seq=last_by_subject.get(s, 0))
                for s, n in counts.items()
            ),
            key=lambda c: c.channel,
        )
