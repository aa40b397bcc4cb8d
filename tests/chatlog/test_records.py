"""The payload rule, the one function every replica runs on every stored message."""

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatlog import InvalidInput, LogEntry, Record, Skip, check_channel, take
from chatlog.records import (
    channel_json,
    compact_record,
    encode_record,
    expand_record,
    timestamp_from_ns,
)

NS = 1_795_840_002_914_892_789


RAW = "chat.room.raw"
"""Where `nats pub chat.room ...` is stored (the stream's transform adds `.raw`)."""
NODE = "chat.room.node"
"""Where chat nodes publish, with the user they stamped."""


def entry(data: bytes, subject: str = NODE, seq: int = 7, msg_id: str | None = None) -> LogEntry:
    return LogEntry(seq=seq, subject=subject, data=data, stored_ns=NS, msg_id=msg_id)


def test_plain_text_is_taken_as_user_nats() -> None:
    got = take(entry(b"Hello everyone!", RAW), 8192)
    assert isinstance(got, Record)
    assert (got.seq, got.channel, got.user, got.text, got.id) == (
        7,
        "room",
        "nats",
        "Hello everyone!",
        "nats-7",
    )
    assert got.stored_at.isoformat() == "2026-11-28T04:26:42.914892+00:00"


def test_json_payload_fields_are_used() -> None:
    data = b'{"text":"hi","id":"m-1","user":"ada","sent_at":"2026-01-02T03:04:05Z"}'
    got = take(entry(data), 8192)
    assert isinstance(got, Record)
    assert (got.id, got.user, got.text) == ("m-1", "ada", "hi")
    assert got.sent_at is not None and got.sent_at.year == 2026


def test_msg_id_header_names_a_json_message_without_id() -> None:
    got = take(entry(b'{"text":"hi"}', msg_id="hdr-1"), 8192)
    assert isinstance(got, Record) and got.id == "hdr-1" and got.user == "anonymous"


def test_json_that_is_not_an_object_is_plain_text_on_the_raw_subject() -> None:
    for data in (b'"quoted"', b"[1,2]", b"{not json", b"42"):
        got = take(entry(data, RAW), 8192)
        assert isinstance(got, Record), data
        assert got.text == data.decode() and got.user == "nats"
        assert isinstance(take(entry(data, NODE), 8192), Skip)  # nodes publish objects only


def test_a_raw_publish_cannot_claim_a_user() -> None:
    """Whatever a publisher's payload says, it is from the publisher role: `nats`."""
    data = b'{"text": "I am the admin", "user": "admin", "id": "x-1"}'
    got = take(entry(data, RAW), 8192)
    assert isinstance(got, Record) and got.user == "nats" and got.text == "I am the admin"
    from_node = take(entry(data, NODE), 8192)
    assert isinstance(from_node, Record) and from_node.user == "admin"


@pytest.mark.parametrize(
    ("data", "subject", "reason"),
    [
        (b"\xff\xfe bad utf-8", RAW, "bad_utf8"),
        (b'{"text": 5}', RAW, "bad_schema"),
        (b'{"user": "x"}', RAW, "bad_schema"),
        (b'{"text": "hi", "sent_at": "yesterday"}', NODE, "bad_schema"),
        (b'{"text": ""}', NODE, "bad_schema"),
        (b"plain", NODE, "bad_schema"),
        (b"x" * 9000, RAW, "oversized"),
        (msgspec.json.encode({"text": "y" * 9000}), NODE, "oversized"),
        (b"", RAW, "empty"),
        (b"hello", "chat.a.b", "bad_channel"),
        (b"hello", "chat.room", "bad_channel"),  # schema 1's layout: not in this log
        (b"hello", "chat.room.other", "bad_channel"),
    ],
)
def test_poison_is_skipped_with_a_reason(data: bytes, subject: str, reason: str) -> None:
    got = take(entry(data, subject=subject), 8192)
    assert isinstance(got, Skip)
    assert got.reason == reason and got.seq == 7


def test_limit_counts_utf8_bytes_of_the_text_not_of_the_json() -> None:
    text = "é" * 4096  # 8192 bytes
    assert isinstance(take(entry(msgspec.json.encode({"text": text})), 8192), Record)
    assert isinstance(take(entry(msgspec.json.encode({"text": text + "e"})), 8192), Skip)


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "dot.ted", "star*", "ümlaut", ">"])
def test_bad_channel_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_channel(name)
    assert info.value.code == "invalid_channel"


@pytest.mark.parametrize("name", ["a", "default-channel", "A_b-9", "x" * 64])
def test_good_channel_names_pass(name: str) -> None:
    assert check_channel(name) == name


@given(
    seq=st.integers(min_value=1, max_value=2**53),
    channel=st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True),
    ident=st.text(min_size=1, max_size=40),
    user=st.text(min_size=1, max_size=20),
    text=st.text(min_size=1, max_size=300),
    sent_at=st.none() | st.datetimes(timezones=st.just(UTC)),
    stored_ns=st.integers(min_value=0, max_value=4_000_000_000 * 10**9),
    name=st.none() | st.text(min_size=1, max_size=20),
)
def test_a_compact_record_expands_to_exactly_its_encoding(
    seq: int,
    channel: str,
    ident: str,
    user: str,
    text: str,
    sent_at: datetime | None,
    stored_ns: int,
    name: str | None,
) -> None:
    record = Record(
        seq=seq,
        channel=channel,
        id=ident,
        user=user,
        name=name,
        text=text,
        sent_at=sent_at,
        stored_at=timestamp_from_ns(stored_ns),
    )
    fields, stored_us = compact_record(record)
    assert b"\x1e" not in fields  # the snapshot's separator never occurs raw
    assert expand_record(seq, channel_json(channel), fields, stored_us) == (
        encode_record(record).decode()
    )
