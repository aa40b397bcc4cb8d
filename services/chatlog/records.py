"""Wire types of the log and the one rule that turns a stored message into a record.

Every replica (chat nodes, archiver) runs :func:`take` on the same bytes with
the same ``max_text`` (read from the stream's metadata, not from local
settings), so every replica accepts and skips exactly the same sequences.

Who sent a message is decided by the subject it is stored on, which NATS
permissions guard (:mod:`chatlog.names`): a node's message carries the user the
node stamped into it; a raw publish is always from :data:`RAW_USER`, whatever
its payload claims.
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec

from chatlog.names import NODE, channel_of

MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[!-~]+\Z")]
UserName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(min_length=1)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]

RAW_USER = "nats"
"""The user of a plain-text payload, such as one sent by ``nats pub``."""
ANONYMOUS = "anonymous"


class Payload(msgspec.Struct, frozen=True, omit_defaults=True):
    """The JSON body published on ``chat.<channel>``. New fields must get defaults."""

    text: Text
    id: MessageId | None = None
    user: UserName | None = None
    sent_at: Timestamp | None = None
    name: UserName | None = None
    """The sender's display name, from the token's ``name`` claim (nodes only)."""


class Record(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """A message as every replica serves it. A field added later has a default and is
    left out while it has it, so records stored before it existed are served unchanged."""

    seq: int
    channel: str
    id: str
    user: str
    name: str | None = None
    text: str
    sent_at: datetime | None
    stored_at: datetime


class LogEntry(msgspec.Struct, frozen=True, gc=False):
    """One stored message, as it came out of JetStream."""

    seq: int
    subject: str
    data: bytes
    stored_ns: int
    msg_id: str | None = None
    trace_parent: str | None = None
    """The W3C ``traceparent`` the sender published with, if it was tracing."""


class Skip(msgspec.Struct, frozen=True):
    """Why a stored message is not served. The same on every replica."""

    seq: int
    reason: str
    detail: str


_payload_decoder = msgspec.json.Decoder(Payload)
_encoder = msgspec.json.Encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_payload(payload: Payload) -> bytes:
    return _encoder.encode(payload)


def encode_record(record: Record) -> bytes:
    return _encoder.encode(record)


class _Fields(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """The fields of a :class:`Record` between ``channel`` and ``stored_at``, in its order."""

    id: str
    user: str
    name: str | None = None
    text: str
    sent_at: datetime | None


def compact_record(record: Record) -> tuple[bytes, int]:
    """The record without what a replica holds elsewhere (seq, channel, stored_at): the
    JSON of its other fields without braces, and stored_at in microseconds.
    :func:`expand_record` gives back exactly ``encode_record(record)``."""
    fields = _Fields(
        id=record.id, user=record.user, name=record.name, text=record.text, sent_at=record.sent_at
    )
    stored_us = (record.stored_at - _EPOCH) // timedelta(microseconds=1)
    return _encoder.encode(fields)[1:-1], stored_us


def channel_json(channel: str) -> str:
    return _encoder.encode(channel).decode()


def expand_record(seq: int, channel_json: str, fields: bytes, stored_us: int) -> str:
    stored_at = _encoder.encode(_EPOCH + timedelta(microseconds=stored_us)).decode()
    return f'{{"seq":{seq},"channel":{channel_json},{fields.decode()},"stored_at":{stored_at}}}'


def timestamp_from_ns(ns: int) -> datetime:
    # Microsecond precision, truncated: the same value whether the time came from
    # a consumer's ack subject (integer ns) or a direct get's RFC 3339 header.
    return _EPOCH + timedelta(microseconds=ns // 1000)


def take(entry: LogEntry, max_text: int) -> Record | Skip:
    """Apply the payload rule. On a node's subject the payload must be a JSON object that
    matches :class:`Payload`. On the raw subject a JSON object that matches is taken
    for its text, id and sent_at, anything else that is UTF-8 is plain text, and the
    user is :data:`RAW_USER` either way."""
    where = channel_of(entry.subject)
    if where is None:
        return Skip(entry.seq, "bad_channel", f"subject {entry.subject!r} names no valid channel")
    channel, kind = where
    try:
        raw_text = entry.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Skip(entry.seq, "bad_utf8", str(exc))
    looks_like_object = raw_text.lstrip().startswith("{")
    if len(entry.data) > max_text and not looks_like_object:
        return Skip(entry.seq, "oversized", f"{len(entry.data)} bytes > {max_text}")
    payload: Payload | None = None
    if looks_like_object or kind == NODE:
        try:
            payload = _payload_decoder.decode(entry.data)
        except msgspec.ValidationError as exc:
            return Skip(entry.seq, "bad_schema", str(exc))
        except msgspec.DecodeError as exc:
            if kind == NODE:  # nodes publish JSON objects only
                return Skip(entry.seq, "bad_schema", str(exc))
            payload = None  # not a JSON object after all: plain text
    name = None
    if payload is None:
        text, user, msg_id, sent_at = raw_text, RAW_USER, entry.msg_id, None
    else:
        text, msg_id, sent_at = payload.text, payload.id or entry.msg_id, payload.sent_at
        user = (payload.user or ANONYMOUS) if kind == NODE else RAW_USER
        name = payload.name if kind == NODE else None
    size = len(text.encode("utf-8"))
    if size > max_text:
        return Skip(entry.seq, "oversized", f"text of {size} bytes > {max_text}")
    if not text:
        return Skip(entry.seq, "empty", "empty text")
    return Record(
        seq=entry.seq,
        channel=channel,
        id=msg_id or f"nats-{entry.seq}",
        user=user,
        name=name,
        text=text,
        sent_at=sent_at,
        stored_at=timestamp_from_ns(entry.stored_ns),
    )
