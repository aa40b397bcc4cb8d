"""The send path shared by REST and WebSocket: validate, publish, wait for the PubAck."""

import uuid
from datetime import datetime

from chat.follower import Follower
from chat.replica import Replica
from chat.wire import SendResult
from chatlog import LogError, check_channel
from chatlog.records import Payload, encode_payload
from servicekit.errors import ServiceError, bad_request, from_log_error


class Writer:
    def __init__(self, follower: Follower, replica: Replica) -> None:
        self._follower = follower
        self._replica = replica

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
        self.validate(channel, text)
        chatlog = self._follower.chatlog
        if chatlog is None:
            raise ServiceError(503, "log_unavailable", "not connected to NATS yet")
        msg_id = msg_id or uuid.uuid4().hex
        payload = encode_payload(Payload(text=text, id=msg_id, user=user, sent_at=sent_at))
        try:
            ack = await chatlog.publish(channel, payload, msg_id)
        except LogError as exc:
            raise from_log_error(exc) from exc
        return SendResult(seq=ack.seq, id=msg_id, duplicate=ack.duplicate)
