"""The NATS connection and the verbs services use: ensure, publish, info, page, tail.

All nats-py errors are translated here into :mod:`chatlog.errors`.
"""

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from chatlog.errors import LogRejected, LogUnavailable
from chatlog.names import STREAM_NAME, SUBJECTS, channel_of, subject_for
from chatlog.records import LogEntry, Record, encode_record, take
from chatlog.snapshots import SnapshotMeta, SnapshotStore
from chatlog.stream import StreamSpec, max_text_of
from chatlog.tail import Tail

log = logging.getLogger("chatlog")

_NATS_DOWN = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    OSError,
)
_DIRECT_GET = f"$JS.API.DIRECT.GET.{STREAM_NAME}"
_STREAM_NOT_FOUND = 10059
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
    """One NATS connection, owned by one service."""

    def __init__(self, nc: Client, spec: StreamSpec, timeout: float, api_timeout: float) -> None:
        self._nc = nc
        # Management calls (stream info, consumer create, direct get) get a short timeout:
        # while a stream elects a new leader they hang, and a watchdog stuck for the whole
        # publish timeout would delay recovery by that much.
        self._js: JetStreamContext = nc.jetstream(timeout=api_timeout)
        self._spec = spec
        self._timeout = timeout
        self._api_timeout = api_timeout
        # Snapshot bodies are large: their chunk publishes get the publish timeout.
        self._snapshots = SnapshotStore(nc.jetstream(timeout=timeout), spec.replicas)

    @classmethod
    async def connect(
        cls,
        servers: list[str],
        *,
        name: str,
        spec: StreamSpec,
        timeout: float = 5.0,
        api_timeout: float = 2.0,
        on_event: Callable[[str], None] | None = None,
    ) -> "ChatLog":
        """Connect once (raise LogUnavailable if no server answers), then reconnect forever."""

        def event(kind: str) -> Callable[..., object]:
            async def handler(*args: object) -> None:
                if args:
                    log.warning("nats %s: %s", kind, args[0])
                if on_event is not None:
                    on_event(kind)

            return handler

        try:
            nc = await nats.connect(
                servers,
                name=name,
                connect_timeout=2,
                allow_reconnect=True,
                # Bounded for the first connect, so a caller learns that NATS is down...
                max_reconnect_attempts=1,
                reconnect_time_wait=0.25,
                # A server that stops answering (paused, partitioned) is left after ~6 s.
                ping_interval=2,
                max_outstanding_pings=3,
                error_cb=event("error"),
                disconnected_cb=event("disconnected"),
                reconnected_cb=event("reconnected"),
                closed_cb=event("closed"),
            )
        except (*_NATS_DOWN, nats.errors.NoServersError) as exc:
            raise LogUnavailable(f"cannot connect to NATS at {','.join(servers)}: {exc!r}") from exc
        # ...and unbounded once connected: a running service never gives up on NATS.
        nc.options["max_reconnect_attempts"] = -1
        return cls(nc, spec, timeout, min(api_timeout, timeout))

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def close(self) -> None:
        if not self._nc.is_closed:
            try:
                await self._nc.drain()
            except (*_NATS_DOWN, nats.errors.Error):
                await self._nc.close()

    async def ensure_stream(self) -> LogInfo:
        """Create the stream, or check that the existing one is compatible. Idempotent and
        safe under concurrent starts: JetStream accepts a create with an identical
        config, and a racing create with another config surfaces as StreamConflict."""
        async with self._boundary("ensure stream"):
            try:
                info = await self._js.stream_info(STREAM_NAME)
            except nats.js.errors.NotFoundError:
                try:
                    info = await self._js.add_stream(self._spec.config())
                    log.info("created stream %s (replicas=%d)", STREAM_NAME, self._spec.replicas)
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code != _STREAM_NAME_IN_USE:
                        raise
                    info = await self._js.stream_info(STREAM_NAME)
            self._spec.check(info.config)
            return self._info(info)

    async def info(self) -> LogInfo:
        """Raises LogUnavailable when NATS is down or the stream does not exist."""
        async with self._boundary("stream info"):
            try:
                return self._info(await self._js.stream_info(STREAM_NAME))
            except nats.js.errors.NotFoundError as exc:
                raise LogUnavailable(f"stream {STREAM_NAME} does not exist") from exc

    def _info(self, info: api.StreamInfo) -> LogInfo:
        created = info.created or datetime(1970, 1, 1, tzinfo=UTC)
        return LogInfo(
            epoch=created.isoformat().replace("+00:00", "Z"),
            first_seq=info.state.first_seq,
            last_seq=info.state.last_seq,
            messages=info.state.messages,
            max_text=max_text_of(info.config, self._spec.max_text),
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        pause = 0.05
        async with self._boundary("publish"):
            while True:
                remaining = deadline - loop.time()
                try:
                    ack = await self._js.publish(
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
        async with self._boundary("publish"):
            await self._nc.publish(subject_for(channel), payload)
            await self._nc.flush(timeout=max(1, int(self._timeout)))

    async def delete_stream(self) -> None:
        async with self._boundary("delete stream"):
            try:
                await self._js.delete_stream(STREAM_NAME)
            except nats.js.errors.NotFoundError:
                pass

    async def snapshot_meta(self) -> SnapshotMeta | None:
        async with self._boundary("snapshot info"):
            return await self._snapshots.meta()

    async def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        async with self._boundary("snapshot load"):
            return await self._snapshots.load()

    async def save_snapshot(self, meta: SnapshotMeta, body: bytes) -> None:
        async with self._boundary("snapshot save"):
            await self._snapshots.save(meta, body)

    def tail(self, from_seq: int, heartbeat: float) -> Tail:
        return Tail(self._nc, self._js, from_seq, heartbeat, self._api_timeout)

    async def page(self, channel: str, after: int, limit: int) -> tuple[list[LogEntry], int]:
        """Up to ``limit`` stored entries of ``channel`` with seq > ``after``, ascending, and the
        number still pending after them. Served by Direct Get, so no consumer is created."""
        request = {"seq": after + 1, "next_by_subj": subject_for(channel), "batch": limit}
        return await self._direct_batch(request)

    async def next_entry(self, channel: str, after: int) -> LogEntry | None:
        """The first entry of ``channel`` with seq > ``after``, answered by the stream leader.

        Direct Get may be answered by any replica, and a replica that is behind returns a
        correct but shorter answer (it holds a prefix of the log). This leader-served read
        is how a reader confirms that a short page really is the end."""
        request = {"seq": after + 1, "next_by_subj": subject_for(channel)}
        async with self._boundary("msg get"):
            msg = await self._nc.request(
                f"$JS.API.STREAM.MSG.GET.{STREAM_NAME}",
                json.dumps(request).encode(),
                timeout=self._api_timeout,
            )
        answer = json.loads(msg.data)
        error = answer.get("error")
        if error:
            if error.get("code") == 404:
                return None
            detail = f"msg get: {error.get('description')} (code {error.get('err_code')})"
            if error.get("code") == 503:
                # "JetStream system temporarily unavailable": e.g. right after a partition
                # heals, until a meta leader is elected again. Retryable, nothing is wrong.
                raise LogUnavailable(detail)
            raise LogRejected(detail)
        found = answer["message"]
        headers = (
            base64.b64decode(found["hdrs"]).decode("utf-8", "replace") if found.get("hdrs") else ""
        )
        msg_id = next(
            (
                line.split(":", 1)[1].strip()
                for line in headers.split("\r\n")
                if line.lower().startswith("nats-msg-id:")
            ),
            None,
        )
        return LogEntry(
            seq=int(found["seq"]),
            subject=found["subject"],
            data=base64.b64decode(found.get("data") or ""),
            stored_ns=_ns_from_rfc3339(found["time"]),
            msg_id=msg_id,
        )

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
        async with self._boundary("stream info"):
            try:
                info = await self._js.stream_info(STREAM_NAME, subjects_filter=SUBJECTS)
            except nats.js.errors.NotFoundError as exc:
                raise LogUnavailable(f"stream {STREAM_NAME} does not exist") from exc
        counts = {s: n for s, n in (info.state.subjects or {}).items() if channel_of(s)}
        if not counts:
            return []
        lasts, _ = await self._direct_batch({"multi_last": [SUBJECTS], "batch": len(counts)})
        last_by_subject = {e.subject: e.seq for e in lasts}
        return sorted(
            (
                ChannelStat(channel=channel_of(s) or s, count=n, last_seq=last_by_subject.get(s, 0))
                for s, n in counts.items()
            ),
            key=lambda c: c.channel,
        )

    async def _direct_batch(self, request: dict[str, object]) -> tuple[list[LogEntry], int]:
        # A batched Direct Get answers with one message per entry, then an EOB status
        # (204) carrying Nats-Num-Pending; "nothing there" is a single 404.
        async with self._boundary("direct get"):
            inbox = self._nc.new_inbox()
            sub = await self._nc.subscribe(inbox, pending_msgs_limit=0, pending_bytes_limit=0)
            try:
                await self._nc.publish(_DIRECT_GET, json.dumps(request).encode(), reply=inbox)
                entries: list[LogEntry] = []
                while True:
                    msg = await sub.next_msg(timeout=self._api_timeout)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status == "204":
                        return entries, int(headers.get("Nats-Num-Pending", "0"))
                    if status == "404":
                        return entries, 0
                    if status:
                        raise LogRejected(f"direct get: {status} {headers.get('Description', '')}")
                    entries.append(_direct_entry(msg))
            finally:
                await sub.unsubscribe()

    @asynccontextmanager
    async def _boundary(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except _NATS_DOWN as exc:
            raise LogUnavailable(f"{what}: NATS unavailable ({exc!r})") from exc
        except nats.js.errors.APIError as exc:
            raise LogRejected(f"{what}: {exc.description or exc!r} (code {exc.err_code})") from exc
        except TimeoutError as exc:
            raise LogUnavailable(f"{what}: timed out") from exc


def _direct_entry(msg: Msg) -> LogEntry:
    headers = msg.headers or {}
    return LogEntry(
        seq=int(headers["Nats-Sequence"]),
        subject=headers["Nats-Subject"],
        data=msg.data,
        stored_ns=_ns_from_rfc3339(headers["Nats-Time-Stamp"]),
        msg_id=headers.get("Nats-Msg-Id"),
    )


def _ns_from_rfc3339(stamp: str) -> int:
    # JetStream writes UTC with up to nanosecond digits: 2026-11-28T04:50:01.123456789Z
    whole, _, frac = stamp.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])
