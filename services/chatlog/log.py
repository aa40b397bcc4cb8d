"""``ChatLog``: the verbs services use (check or ensure the stream, publish, info, tail,
read, snapshots).

One ``ChatLog`` is created by each service at start and handed to every part that
needs the log. It owns its connection: ``connect`` and ``reconnect`` swap it inside,
so no caller ever holds a handle that may be gone. Until it is connected, every verb
raises LogUnavailable.
"""

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.js.errors
from nats.js import api

from chatlog.connection import Connection, boundary
from chatlog.errors import LogFull, LogUnavailable, StreamLimitUnknown, StreamMissing
from chatlog.names import (
    POLICY_BUCKET,
    SNAPSHOT_STREAM,
    STREAM_NAME,
    SUBJECTS,
    channel_filter,
    channel_of,
    node_subject,
    raw_subject,
)
from chatlog.reads import direct_batch, leader_get
from chatlog.records import LogEntry, Record, encode_record, take
from chatlog.settings import LogSettings
from chatlog.snapshot_store import SnapshotMeta, SnapshotStore
from chatlog.stream import StreamSpec, check_log, check_snapshots, max_text_of
from chatlog.tail import Tail

_MULTI_LAST = 500
"""Subjects per batched Direct Get of last messages (JetStream answers at most 1,024)."""
POLICY_MAX_BYTES = 64 * 1024 * 1024
POLICY_SHARE = 0.02
"""Of the account's storage per copy: the log takes 80%, snapshots 15%."""

log = logging.getLogger("chatlog")

_STORE_FAILED = 10077


@dataclass(frozen=True)
class LogInfo:
    """The stream as it is now. ``epoch`` is its creation time: a new stream, a new log."""

    epoch: str
    first_seq: int
    last_seq: int
    messages: int
    max_text: int
    replicas: int
    bytes: int
    max_bytes: int
    """-1: no limit."""
    append_only: bool
    """deny_delete and deny_purge: nothing in the log can be removed."""

    @property
    def usage(self) -> float:
        return self.bytes / self.max_bytes if self.max_bytes > 0 else 0.0


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
    """The log, as one service sees it. Create once; ``connect`` before use. ``role`` is
    the NATS role its credentials have (:mod:`chatlog.roles`)."""

    def __init__(self, settings: LogSettings, name: str, role: str) -> None:
        self.settings = settings
        self._name = name
        self._role = role
        self._conn: Connection | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        """Old connections, closed once what was in flight on them is over."""
        self._reconnects = 0
        self._signing_key = settings.signing_key()
        self._dedupe_key = settings.dedupe_key()
        self.warned: list[str] = []
        """What the last stream check let pass (not append-only, no byte limit)."""

    @classmethod
    async def open(cls, settings: LogSettings, name: str, role: str) -> "ChatLog":
        """A connected ChatLog (LogUnavailable if NATS does not answer)."""
        chatlog = cls(settings, name, role)
        await chatlog.connect()
        return chatlog

    async def connect(self) -> None:
        """Connect, unless connected already. Raises LogUnavailable if no server answers;
        once connected, nats-py reconnects by itself for ever."""
        if self._conn is None:
            self._conn = await Connection.open(self.settings, self._name, self._role)

    async def reconnect(self) -> None:
        """A new connection (to a server picked at random) for every new call; the old one
        is closed once the calls in flight on it have had their time (a send waiting for
        its PubAck must not fail because the follower changed servers). Tails of the old
        connection end with TailBroken."""
        fresh = await Connection.open(self.settings, self._name, self._role)
        old, self._conn = self._conn, fresh
        self._reconnects += 1
        if old is not None:
            task = asyncio.create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, conn: Connection) -> None:
        try:
            await asyncio.sleep(self.settings.publish_timeout)
        finally:
            await conn.close()

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
        retiring, self._retiring = self._retiring, set()
        for task in retiring:
            task.cancel()  # closes its connection now
        await asyncio.gather(*retiring, return_exceptions=True)
        if conn is not None:
            await conn.close()

    def _connection(self) -> Connection:
        if self._conn is None:
            raise LogUnavailable("not connected to NATS yet")
        return self._conn

    async def _stream_info(self, stream: str) -> api.StreamInfo | None:
        try:
            return await self._connection().js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return None

    async def check_stream(self) -> LogInfo:
        """What every service does at start: the stream exists and means what we expect.
        Raises LogUnavailable if it does not exist (an admin creates it: ensure-stream) and
        StreamConflict if it means something else; what only an admin must refuse (not
        append-only, no byte limit) is logged and kept in ``warned``."""
        async with boundary("stream info", self._conn):
            info = await self._stream_info(STREAM_NAME)
        if info is None:
            raise StreamMissing(
                f"stream {STREAM_NAME} does not exist: create it with "
                "`chat-cluster ensure-stream` and admin credentials"
            )
        self.warned = check_log(info.config, strict=False)
        for warning in self.warned:
            log.warning("%s", warning)
        return self._info(info)

    async def ensure_stream(self, spec: StreamSpec) -> LogInfo:
        """What ``ensure-stream`` does with admin credentials: create both streams, or check
        the existing ones strictly and raise their byte limits to the configured ones.
        Idempotent and safe under concurrent starts: JetStream accepts a create with an
        identical config, and a racing create with another config is a StreamConflict."""
        conn = self._connection()
        async with boundary("ensure stream", conn):
            account = await conn.js.account_info()
            try:
                log_bytes, snapshot_bytes = spec.sizes(account.limits.max_storage or 0)
            except ValueError as exc:
                raise StreamLimitUnknown(str(exc)) from exc
            info = await self._ensure(STREAM_NAME, spec.config(log_bytes))
            spec.check(info.config)
            snapshots = await self._ensure(SNAPSHOT_STREAM, spec.snapshot_config(snapshot_bytes))
            check_snapshots(snapshots.config, strict=True)
            await self._ensure_policy(spec.replicas, account.limits.max_storage or 0)
        return self._info(info)

    async def _ensure_policy(self, replicas: int, account_storage: int) -> None:
        """The grants bucket beside the log (:mod:`chatlog.policy`), left as it is if there."""
        js = self._connection().js
        try:
            await js.key_value(POLICY_BUCKET)
            return
        except nats.js.errors.BucketNotFoundError:
            pass
        max_bytes = POLICY_MAX_BYTES
        if account_storage > 0:
            max_bytes = min(max_bytes, int(account_storage / replicas * POLICY_SHARE))
        try:
            await js.create_key_value(
                api.KeyValueConfig(
                    bucket=POLICY_BUCKET,
                    description="chat-cluster grants (who may read or send where)",
                    history=1,
                    storage=api.StorageType.FILE,
                    replicas=replicas,
                    max_bytes=max_bytes,
                )
            )
        except nats.js.errors.APIError:
            await js.key_value(POLICY_BUCKET)  # a concurrent create won
        log.info("created bucket %s (replicas=%d)", POLICY_BUCKET, replicas)

    async def _ensure(self, stream: str, want: api.StreamConfig) -> api.StreamInfo:
        js = self._connection().js
        info = await self._stream_info(stream)
        if info is None:
            try:
                info = await js.add_stream(want)
                log.info("created stream %s (replicas=%d)", stream, want.num_replicas)
                return info
            except nats.js.errors.APIError:
                # A concurrent create won ("name in use", or "insufficient storage" when
                # both reservations were counted): use its stream, checked below.
                found = await self._stream_info(stream)
                if found is None:
                    raise
                info = found
        have = info.config.max_bytes or -1
        wanted = want.max_bytes or -1
        config, changed = info.config, []
        if have != -1 and (wanted == -1 or wanted > have):
            # Only ever raised here: lowering a limit below what is stored is an operator's
            # decision, made by hand.
            config.max_bytes = wanted
            changed.append(f"max_bytes {have} -> {wanted}")
        if (config.max_msg_size or -1) == -1 and (want.max_msg_size or -1) > 0:
            config.max_msg_size = want.max_msg_size
            changed.append(f"max_msg_size -1 -> {want.max_msg_size}")
        if changed:
            info = await js.update_stream(config)
            log.warning("raised the limits of %s: %s", stream, ", ".join(changed))
        return info

    async def info(self) -> LogInfo:
        """The stream now. Raises LogUnavailable when NATS is down, StreamMissing when the
        stream does not exist, and StreamConflict when it no longer means what it did
        (someone changed its subjects, transform, retention, schema...)."""
        async with boundary("stream info", self._conn):
            info = await self._stream_info(STREAM_NAME)
        if info is None:
            raise StreamMissing(f"stream {STREAM_NAME} does not exist")
        check_log(info.config, strict=False)
        return self._info(info)

    def _info(self, info: api.StreamInfo) -> LogInfo:
        created = info.created or datetime(1970, 1, 1, tzinfo=UTC)
        config = info.config
        return LogInfo(
            epoch=created.isoformat().replace("+00:00", "Z"),
            first_seq=info.state.first_seq,
            last_seq=info.state.last_seq,
            messages=info.state.messages,
            max_text=max_text_of(config),
            replicas=config.num_replicas or 1,
            bytes=info.state.bytes,
            max_bytes=config.max_bytes if config.max_bytes is not None else -1,
            append_only=bool(config.deny_delete and config.deny_purge),
        )

    def dedupe_id(self, user: str, channel: str, msg_id: str) -> str:
        """The Nats-Msg-Id of a user's message: the client's id scoped to its sender and
        channel, so no one can take another user's ids. Keyed with the nodes' secret, so a
        raw publisher (who may set any Nats-Msg-Id) cannot compute one to squat it."""
        message = f"{user}\x00{channel}\x00{msg_id}".encode()
        return hmac.new(self._dedupe_key, message, hashlib.sha256).hexdigest()[:32]

    async def publish(
        self, channel: str, payload: bytes, msg_id: str, trace_parent: str | None = None
    ) -> PubAck:
        """Publish a node's message and wait for the PubAck: after it returns, the message is
        stored (and, with ``sync_interval: always``, on disk). The same ``msg_id`` (the
        :meth:`dedupe_id`) within the duplicate window returns the first seq with
        ``duplicate=True``. LogFull: the
        log is at its byte limit, nothing stored. LogUnavailable promises nothing.
        ``trace_parent`` travels in the message's headers to every replica."""
        subject = node_subject(channel)
        headers = {"Nats-Msg-Id": msg_id}
        if trace_parent:
            headers["traceparent"] = trace_parent
        conn = self._connection()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_timeout
        pause = 0.05
        async with boundary("publish", conn):
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
                except nats.js.errors.APIError as exc:
                    # 10077 is JetStream's generic "store failed"; only its byte limit
                    # means the log is full (nothing else can fail for a node's message).
                    if exc.err_code == _STORE_FAILED and "maximum bytes" in str(exc.description):
                        raise LogFull(
                            "the log is full (its byte limit is reached): nothing was stored; "
                            "an operator raises the limit with `chat-cluster ensure-stream "
                            "--log-max-bytes`"
                        ) from exc
                    raise
        return PubAck(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def publish_raw(self, channel: str, payload: bytes) -> None:
        """A fire-and-forget core publish, exactly what ``nats pub chat.<channel>`` does."""
        await self.publish_raw_subject(raw_subject(channel), payload)

    async def publish_raw_subject(self, subject: str, payload: bytes) -> None:
        """A core publish on any subject (tools and tests; NATS permissions decide)."""
        conn = self._connection()
        async with boundary("publish", conn):
            await conn.nc.publish(subject, payload)
            await conn.nc.flush(timeout=max(1, int(self.settings.publish_timeout)))

    async def delete_stream(self) -> None:
        conn = self._connection()
        async with boundary("delete stream", conn):
            try:
                await conn.js.delete_stream(STREAM_NAME)
            except nats.js.errors.NotFoundError:
                pass

    def _store(self) -> SnapshotStore | None:
        if self._signing_key is None:
            return None  # no secret to sign or check with: no snapshots at all
        return SnapshotStore(self._connection(), self._signing_key)

    @property
    def snapshots_enabled(self) -> bool:
        return self._signing_key is not None

    async def snapshot_meta(self) -> SnapshotMeta | None:
        """What the newest trusted snapshot covers. SnapshotRejected for one not signed
        by a node; None when there is none (or no snapshot stream, or no key)."""
        store = self._store()
        if store is None:
            return None
        async with boundary("snapshot info", self._conn):
            manifest = await store.manifest()
        return manifest.meta if manifest is not None else None

    async def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot, verified (SnapshotRejected otherwise), or None."""
        store = self._store()
        if store is None:
            return None
        async with boundary("snapshot load", self._conn):
            manifest = await store.manifest()
            if manifest is None:
                return None
            return manifest.meta, await store.load(manifest)

    async def save_snapshot(self, meta: SnapshotMeta, body: bytes) -> bool:
        """Save a snapshot, signed; False (nothing saved) without a key."""
        store = self._store()
        if store is None:
            return False
        async with boundary("snapshot save", self._conn):
            await store.save(meta, body, self.settings.publish_timeout)
        return True

    def tail(self, from_seq: int, heartbeat: float) -> Tail:
        """An ordered, gap-checked delivery of the stream from ``from_seq``."""
        conn = self._connection()
        return Tail(conn.nc, conn.js, from_seq, heartbeat, conn.api_timeout)

    async def page(self, channel: str, after: int, limit: int) -> tuple[list[LogEntry], int]:
        """Up to ``limit`` stored entries of ``channel`` with seq > ``after``, ascending, and the
        number still pending after them. Served by Direct Get, so no consumer is created."""
        request = {"seq": after + 1, "next_by_subj": channel_filter(channel), "batch": limit}
        return await direct_batch(self._connection(), STREAM_NAME, request)

    async def next_entry(self, channel: str, after: int) -> LogEntry | None:
        """The first entry of ``channel`` with seq > ``after``, answered by the stream leader."""
        request = {"seq": after + 1, "next_by_subj": channel_filter(channel)}
        return await leader_get(self._connection(), request)

    async def entry_at(self, seq: int) -> LogEntry | None:
        """The entry stored at ``seq`` as the stream leader has it; None if there is none."""
        return await leader_get(self._connection(), {"seq": seq})

    async def entries(self, after: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` entries of the whole log with seq > ``after`` (any replica)."""
        request = {"seq": after + 1, "next_by_subj": SUBJECTS, "batch": limit}
        found, _ = await direct_batch(self._connection(), STREAM_NAME, request)
        if not found:  # a replica that is behind may know less: ask the leader
            tail = await leader_get(
                self._connection(), {"seq": after + 1, "next_by_subj": SUBJECTS}
            )
            found = [tail] if tail is not None else []
        return found

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

    async def read_records_before(
        self, channel: str, before: int, limit: int, max_text: int
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` records of ``channel`` with seq < ``before``, ascending, encoded
        as every replica encodes them. JetStream reads forward only; backwards, each step
        asks for the last message of the channel's subjects up to a seq (one request per
        message: for the pages a bounded node no longer holds, which people scroll to
        slowly)."""
        conn = self._connection()
        records: list[tuple[int, bytes]] = []
        cursor = before
        while len(records) < limit and cursor > 1:
            request = {"multi_last": [channel_filter(channel)], "up_to_seq": cursor - 1, "batch": 4}
            found, _ = await direct_batch(conn, STREAM_NAME, request)
            if not found:
                break
            entry = max(found, key=lambda e: e.seq)
            cursor = entry.seq
            taken = take(entry, max_text)
            if isinstance(taken, Record):
                records.append((taken.seq, encode_record(taken)))
        records.reverse()
        return records

    async def channel_stats(
        self, after: str = "", limit: int = 1000, keep: Callable[[str], bool] | None = None
    ) -> list[ChannelStat]:
        """Count and last seq of the valid channels named after ``after`` (in name order),
        at most ``limit`` of them, only those ``keep`` accepts: from the stream's
        per-subject state, then one batched Direct Get of the page's last messages (a
        request for every subject at once is refused past 1,024 results)."""
        conn = self._connection()
        async with boundary("stream info", conn):
            try:
                info = await conn.js.stream_info(STREAM_NAME, subjects_filter=SUBJECTS)
            except nats.js.errors.NotFoundError as exc:
                raise LogUnavailable(f"stream {STREAM_NAME} does not exist") from exc
        counts: dict[str, int] = {}
        subjects: dict[str, list[str]] = {}
        for subject, n in (info.state.subjects or {}).items():
            where = channel_of(subject)
            if where is not None and where[0] > after and (keep is None or keep(where[0])):
                counts[where[0]] = counts.get(where[0], 0) + n
                subjects.setdefault(where[0], []).append(subject)
        page = sorted(counts)[:limit]
        if not page:
            return []
        wanted = [subject for name in page for subject in subjects[name]]
        last_seq: dict[str, int] = {}
        for start in range(0, len(wanted), _MULTI_LAST):
            chunk = wanted[start : start + _MULTI_LAST]
            request = {"multi_last": chunk, "batch": len(chunk)}
            lasts, _ = await direct_batch(conn, STREAM_NAME, request)
            for entry in lasts:
                where = channel_of(entry.subject)
                if where is not None:
                    last_seq[where[0]] = max(last_seq.get(where[0], 0), entry.seq)
        return [
            ChannelStat(channel=name, count=counts[name], last_seq=last_seq.get(name, 0))
            for name in page
        ]
