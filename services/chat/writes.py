"""The send path shared by REST and WebSocket: validate, publish, wait for the PubAck."""

import time
import uuid
from datetime import datetime

from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from auth import Gate, Identity
from chat.limits import SendLimiter
from chat.logstate import LogState
from chat.replica import Replica
from chat.wire import SendResult
from chatlog import ChatLog, LogError, LogFull, LogUnavailable, check_channel, node_subject
from chatlog.records import Payload, encode_payload
from servicekit.errors import ServiceError, bad_request
from telemetry import current_traceparent

tracer = trace.get_tracer("chat")

# Sends wait for an fsync on R3: from about a millisecond to the 5 s publish timeout.
PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class SendMetrics:
    """The only instruments recorded on a hot path (the rest are observed at scrape time)."""

    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            "chat.publish.duration",
            unit="s",
            description="From publish to PubAck (JetStream stored it), successful sends",
            explicit_bucket_boundaries_advisory=PUBLISH_BUCKETS,
        )
        self.errors = meter.create_counter(
            "chat.publish.errors", "{error}", "Failed sends, by error kind"
        )
        self.duplicates = meter.create_counter(
            "chat.publish.duplicates", "{message}", "Sends the log recognised as duplicates"
        )


class Writer:
    def __init__(
        self,
        chatlog: ChatLog,
        replica: Replica,
        log_state: LogState,
        metrics: SendMetrics,
        tracing: bool,
        gate: Gate,
        limiter: SendLimiter,
    ) -> None:
        self._gate = gate
        self.limiter = limiter
        self._chatlog = chatlog
        self._replica = replica
        self._log_state = log_state
        self._metrics = metrics
        # Without a TracerProvider the spans would be no-ops, yet entering two of them costs
        # about 10 us a send (measured, bench figure 7): skip them altogether.
        self._tracing = tracing

    def validate(self, channel: str, text: str) -> None:
        """Everything we can refuse before NATS is touched (400)."""
        check_channel(channel)
        size = len(text.encode("utf-8"))
        if size > self._replica.max_text:
            raise bad_request(
                "text_too_long", f"text is {size} bytes; the limit is {self._replica.max_text}"
            )
        if not text:
            raise bad_request("empty_text", "text must not be empty")

    def admit(self, who: Identity, address: str) -> None:
        """One send from this sender (the user; the client's address in anonymous mode)
        within its rate, or RateLimited. Called once per send, before ``check``."""
        self.limiter.take(who.user if who.user is not None else f"addr:{address}")

    def check(self, who: Identity, channel: str, text: str, user: str | None) -> None:
        """Everything we refuse before NATS is touched: 400, and 403 for a channel the
        sender may not send to or a ``user`` that is not the token's."""
        self.validate(channel, text)
        if not who.anonymous and user is not None and user != who.user:
            raise ServiceError(
                403, "user_mismatch",
                f"user {user!r} is not the token's ({who.user!r}); leave user out: the node "
                "stamps the sender from the token",
            )  # fmt: skip
        self._gate.check_send(who, channel)

    async def send(
        self,
        who: Identity,
        channel: str,
        text: str,
        msg_id: str | None,
        user: str | None,
        sent_at: datetime | None,
    ) -> SendResult:
        """Returns only after JetStream acknowledged the message. The sender is the token's
        (anonymous mode: whatever ``user`` says). The id, scoped to sender and channel, is
        the Nats-Msg-Id, so a client that retries after an error (on any node) within the
        duplicate window gets the first seq back instead of a second copy."""
        self.check(who, channel, text, user)
        if not who.anonymous:
            user = who.user
        state = self._log_state
        if not state.stream_ok and state.info is not None:
            raise ServiceError(
                503, "stream_missing", "the log does not exist now (deleted, or changed into "
                "something else); nothing was sent; an operator must restore it",
            )  # fmt: skip
        if not state.may_send():
            self._metrics.errors.add(1, {"kind": "log_stalled"})
            raise ServiceError(
                503, "log_stalled", f"the log has stored nothing for "
                f"{time.monotonic() - (state.stalled_since or 0):.0f}s although NATS answers "
                "(its storage may be full); nothing was sent; retry later with the same id",
            )  # fmt: skip
        msg_id = msg_id or uuid.uuid4().hex
        payload = encode_payload(
            Payload(text=text, id=msg_id, user=user, sent_at=sent_at, name=who.name)
        )
        dedupe = self._chatlog.dedupe_id(user or "", channel, msg_id)
        if not self._tracing:
            return await self._publish(channel, payload, msg_id, dedupe, None)
        with tracer.start_as_current_span("chat.send", attributes={"chat.channel": channel}):
            # The publish span's context goes into the message's headers: every node's
            # apply span becomes its child, so one trace follows the message everywhere.
            with tracer.start_as_current_span(
                "chat.publish",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": node_subject(channel),
                    "messaging.message.id": msg_id,
                },
            ) as span:
                return await self._publish(channel, payload, msg_id, dedupe, span)

    async def _publish(
        self, channel: str, payload: bytes, msg_id: str, dedupe: str, span: Span | None
    ) -> SendResult:
        started = time.perf_counter()
        trace_parent = current_traceparent() if span is not None else None
        try:
            ack = await self._chatlog.publish(channel, payload, dedupe, trace_parent)
        except LogError as exc:
            # Counted here, answered by the one error path (HTTP handler, WebSocket frame).
            self._metrics.errors.add(1, {"kind": exc.code})
            if isinstance(exc, LogFull):
                self._log_state.refused_as_full()
            elif isinstance(exc, LogUnavailable) and self._chatlog.connected:
                self._log_state.unanswered_send()
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, exc.detail))
            raise
        self._metrics.duration.record(time.perf_counter() - started)
        self._log_state.stored()
        if ack.duplicate:
            self._metrics.duplicates.add(1)
        if span is not None:
            span.set_attribute("chat.seq", ack.seq)
        return SendResult(seq=ack.seq, id=msg_id, duplicate=ack.duplicate)
