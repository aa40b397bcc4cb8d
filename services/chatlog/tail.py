"""Ordered, gap-checked delivery of the stream from a sequence.

We run the ordered-consumer protocol ourselves on a plain push consumer instead
of nats-py's ``ordered_consumer=True``: nats-py 2.16 advances its sequence
before a slow-consumer drop (a message lost silently) and may fail to recreate
the consumer after a reconnect, reporting only to ``error_cb`` (nats.py #778).
Here the subscription never drops (no pending limits), flow control is
answered only after the caller has applied what came before it (so the
server, not our memory, holds the backlog), and any gap, stall or consumer
error raises :class:`TailBroken`; the caller resumes from applied+1.
"""

import asyncio
import contextlib
import time
from collections import deque

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from chatlog.errors import LogUnavailable, TailBroken
from chatlog.names import STREAM_NAME, SUBJECTS
from chatlog.records import LogEntry


class Tail:
    """One ephemeral consumer. Use as ``async with log.tail(seq, hb) as t: await t.batch()``."""

    def __init__(
        self, nc: Client, js: JetStreamContext, from_seq: int, heartbeat: float, timeout: float
    ) -> None:
        self._nc = nc
        self._js = js
        self._from_seq = from_seq
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._buf: deque[Msg] = deque()
        self._wake = asyncio.Event()
        self._sub: Subscription | None = None
        self._consumer: str | None = None
        self._cseq = 0  # consumer sequence of the last delivered message
        self.position = 0
        """The stream seq this consumer has gone past: the last delivered, or, when an idle
        heartbeat says so, beyond seqs that no longer exist (deleted, purged)."""
        self._flow_replies: list[str] = []
        self._broken: str | None = None
        self._last_activity = time.monotonic()

    async def __aenter__(self) -> "Tail":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        inbox = self._nc.new_inbox()
        # No pending limits: nats-py never drops for us; flow control bounds the backlog.
        try:
            self._sub = await self._nc.subscribe(
                inbox, cb=self._on_msg, pending_msgs_limit=0, pending_bytes_limit=0
            )
            config = api.ConsumerConfig(
                deliver_policy=(
                    api.DeliverPolicy.ALL
                    if self._from_seq <= 1
                    else api.DeliverPolicy.BY_START_SEQUENCE
                ),
                opt_start_seq=self._from_seq if self._from_seq > 1 else None,
                ack_policy=api.AckPolicy.NONE,
                max_deliver=1,
                filter_subject=SUBJECTS,
                flow_control=True,
                idle_heartbeat=self._heartbeat,
                deliver_subject=inbox,
                inactive_threshold=max(30.0, self._heartbeat * 10),
                num_replicas=1,
                mem_storage=True,
            )
            info = await self._js.add_consumer(STREAM_NAME, config, timeout=self._timeout)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            await self.close()
            raise LogUnavailable(
                f"cannot create consumer from seq {self._from_seq}: {exc!r}"
            ) from exc
        self._consumer = info.name
        self._last_activity = time.monotonic()

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        consumer, self._consumer = self._consumer, None
        with contextlib.suppress(nats.errors.Error, OSError, asyncio.TimeoutError):
            if sub is not None:
                await sub.unsubscribe()
            if consumer is not None and self._nc.is_connected:
                await self._js.delete_consumer(STREAM_NAME, consumer)

    async def _on_msg(self, msg: Msg) -> None:
        self._buf.append(msg)
        self._wake.set()

    async def batch(self, max_wait: float, max_entries: int = 256) -> list[LogEntry]:
        """The next entries in stream order (possibly none after ``max_wait``), at most
        ``max_entries`` so the caller can yield between batches. Raises TailBroken when order
        can no longer be guaranteed, after returning every entry before the break."""
        if self._broken:
            raise TailBroken(self._broken)
        await self._answer_flow_control()
        if not self._buf:
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races with the event, and the owner's cancel would then hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_wait):
                    await self._wake.wait()
        buf = self._buf
        msgs = [buf.popleft() for _ in range(min(len(buf), max_entries))]
        now = time.monotonic()
        if msgs:
            self._last_activity = now
        elif now - self._last_activity > 3 * self._heartbeat:
            # Three missed idle heartbeats: the consumer is gone (server restart, stream
            # deleted, route cut). Library defaults would wait far longer.
            raise TailBroken(f"no message or heartbeat for {now - self._last_activity:.1f}s")
        entries: list[LogEntry] = []
        for msg in msgs:
            headers = msg.headers
            if headers and "Status" in headers:
                self._broken = self._control(msg, headers)
            else:
                self._broken = self._data(msg, headers, entries)
            if self._broken:
                break
        return entries

    def _data(self, msg: Msg, headers: dict[str, str] | None, out: list[LogEntry]) -> str | None:
        tokens = (msg.reply or "").split(".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending> (9 tokens), or
        # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>.<r>
        base = 2 if len(tokens) == 9 else 4
        try:
            if tokens[0] != "$JS" or tokens[1] != "ACK":
                raise ValueError(tokens[:2])
            sseq, cseq, stored_ns = (int(tokens[base + i]) for i in (3, 4, 5))
        except (ValueError, IndexError):
            # Not a delivery of our consumer: anyone who learnt our inbox could send one.
            return f"not a delivery of this consumer (reply {msg.reply!r:.80})"
        if cseq != self._cseq + 1:
            return f"consumer sequence gap: expected {self._cseq + 1}, got {cseq} (stream {sseq})"
        self._cseq = cseq
        self.position = sseq
        msg_id = headers.get("Nats-Msg-Id") if headers else None
        trace_parent = headers.get("traceparent") if headers else None
        out.append(
            LogEntry(
                seq=sseq,
                subject=msg.subject,
                data=msg.data,
                stored_ns=stored_ns,
                msg_id=msg_id,
                trace_parent=trace_parent,
            )
        )
        return None

    def _control(self, msg: Msg, headers: dict[str, str]) -> str | None:
        status = headers.get("Status")
        desc = headers.get("Description", "")
        if status != "100":
            return f"consumer status {status} {desc}".strip()
        if desc.startswith("FlowControl"):
            self._flow_replies.append(msg.reply)
            return None
        stalled = headers.get("Nats-Consumer-Stalled")
        if stalled:
            self._flow_replies.append(stalled)
        last = int(headers.get("Nats-Last-Consumer", "0"))
        if last != self._cseq:
            return f"heartbeat reports consumer sequence {last}, we hold {self._cseq}"
        # Everything delivered has arrived: the stream position is past all of it.
        self.position = max(self.position, int(headers.get("Nats-Last-Stream", "0")))
        return None

    async def _answer_flow_control(self) -> None:
        # Called at the start of batch(): everything returned before has been applied,
        # so now is the moment to let the server send more.
        replies, self._flow_replies = self._flow_replies, []
        for reply in replies:
            try:
                await self._nc.publish(reply, b"")
            except (nats.errors.Error, OSError) as exc:
                raise TailBroken(f"cannot answer flow control: {exc!r}") from exc
