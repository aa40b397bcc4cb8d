"""The send path shared by REST and WebSocket: validate, publish, wait for the PubAck."""

import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chat.follower import Follower
from chat.replica import Replica
from chat.wire import SendResult
from chatlog import LogError, check_channel, subject_for
from chatlog.records import Payload, encode_payload
from servicekit.errors import ServiceError, bad_request, from_log_error
from telemetry import current_traceparent

if TYPE_CHECKING:
    from chat.metrics import NodeMetrics  # it imports the WebSocket hub, which imports us

tracer = trace.get_tracer("chat")


class Writer:
    def __init__(self, follower: Follower, replica: Replica, metrics: "NodeMetrics") -> None:
        self._follower = follower
        self._replica = replica
        self._metrics = metrics

    def validate(self, channel: str, text: str) -> None:
        """Everything we can refuse before NATS is touched. Raises ServiceError (400)."""
        try:
            check_channel(channel)
        except LogError as exc:
            raise from_log_error(exc) from exc
        size = len(text.encode("utf-8"))
        if size > self._replica.max_text:
            raise bad_request(
                "text_too_long", f"text is {size} bytes; the limit is {self._replica.max_text}"
            )
        if not text:
            raise bad_request("empty_text", "text must not be empty")

    async def send(
        self,
        channel: str,
        text: str,
        msg_id: str | None,
        user: str | None,
        sent_at: datetime | None,
    ) -> SendResult:
        """Returns only after JetStream acknowledged the message. The id is also the
        Nats-Msg-Id, so a client that retries after an error (on any node) within the
        duplicate window gets the first seq back instead of a second copy."""
        with tracer.start_as_current_span("chat.send", attributes={"chat.channel": channel}):
            self.validate(channel, text)  # a client error: in the HTTP metrics, not ours
            chatlog = self._follower.chatlog
            if chatlog is None:
                self._metrics.publish_errors.add(1, {"kind": "log_unavailable"})
                raise ServiceError(503, "log_unavailable", "not connected to NATS yet")
            msg_id = msg_id or uuid.uuid4().hex
            payload = encode_payload(Payload(text=text, id=msg_id, user=user, sent_at=sent_at))
            # The publish span's context goes into the message's headers: every node's
            # apply span becomes its child, so one trace follows the message everywhere.
            with tracer.start_as_current_span(
                "chat.publish",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": subject_for(channel),
                    "messaging.message.id": msg_id,
                },
            ) as span:
                started = time.perf_counter()
                try:
                    ack = await chatlog.publish(channel, payload, msg_id, current_traceparent())
                except LogError as exc:
                    self._metrics.publish_errors.add(1, {"kind": exc.code})
                    span.set_status(Status(StatusCode.ERROR, exc.detail))
                    raise from_log_error(exc) from exc
                self._metrics.publish_duration.record(time.perf_counter() - started)
                span.set_attribute("chat.seq", ack.seq)
            if ack.duplicate:
                self._metrics.publish_duplicates.add(1)
            return SendResult(seq=ack.seq, id=msg_id, duplicate=ack.duplicate)
