"""Contract tests of the log package against a real nats-server."""

import asyncio
import time

import pytest

from chat_cluster.natsserver import NatsServer
from chatlog import (
    ChatLog,
    LogSettings,
    LogUnavailable,
    StreamConflict,
    StreamSpec,
    TailBroken,
    take,
)
from chatlog.records import Record
from chatlog.roles import ADMIN
from tests.support import open_log, said


async def connect(server: NatsServer) -> ChatLog:
    return await open_log(server, ADMIN)


async def drain_tail(log: ChatLog, from_seq: int, count: int, timeout: float = 10) -> list[int]:
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    async with log.tail(from_seq, heartbeat=0.5) as tail:
        while len(seqs) < count:
            assert time.monotonic() < deadline, f"tail got only {seqs}"
            seqs += [e.seq for e in await tail.batch(0.5)]
    return seqs


async def test_ensure_stream_is_idempotent_under_concurrent_starts(bare_nats: NatsServer) -> None:
    logs = [await connect(bare_nats) for _ in range(6)]
    try:
        infos = await asyncio.gather(*(log.ensure_stream(StreamSpec()) for log in logs))
        assert len({info.epoch for info in infos}) == 1
        assert infos[0].max_text == 8192 and infos[0].last_seq == 0
    finally:
        await asyncio.gather(*(log.close() for log in logs))


async def test_incompatible_stream_is_refused_naming_the_field(bare_nats: NatsServer) -> None:
    first = await connect(bare_nats)
    await first.ensure_stream(StreamSpec(duplicate_window=60))
    other = await connect(bare_nats)
    try:
        with pytest.raises(StreamConflict) as info:
            await other.ensure_stream(StreamSpec(duplicate_window=120))
        assert info.value.field == "duplicate_window"
        assert "duplicate_window" in str(info.value)
        # never changed silently
        again = await first.ensure_stream(StreamSpec(duplicate_window=60))
        assert again.epoch == (await first.info()).epoch
    finally:
        await first.close()
        await other.close()


async def test_publish_is_acknowledged_and_deduplicated_by_id(chatlog: ChatLog) -> None:
    a = await chatlog.publish("room", b'{"text":"one","id":"m1"}', "m1")
    b = await chatlog.publish("room", b'{"text":"two","id":"m2"}', "m2")
    again = await chatlog.publish("room", b'{"text":"one","id":"m1"}', "m1")
    assert (a.seq, a.duplicate) == (1, False)
    assert (b.seq, b.duplicate) == (2, False)
    assert (again.seq, again.duplicate) == (1, True)
    assert (await chatlog.info()).last_seq == 2


async def test_page_reads_one_channel_after_a_seq(chatlog: ChatLog) -> None:
    for i in range(10):
        await chatlog.publish("even" if i % 2 == 0 else "odd", said(f"m{i}"), f"id{i}")
    entries, pending = await chatlog.page("odd", 0, 3)
    assert [e.seq for e in entries] == [2, 4, 6] and pending == 2
    entries, pending = await chatlog.page("odd", 6, 100)
    assert [e.seq for e in entries] == [8, 10] and pending == 0
    assert await chatlog.page("nobody", 0, 10) == ([], 0)
    stats = await chatlog.channel_stats()
    assert [(s.channel, s.count, s.last_seq) for s in stats] == [("even", 5, 9), ("odd", 5, 10)]


async def test_direct_get_and_consumer_give_the_same_stored_time(chatlog: ChatLog) -> None:
    await chatlog.publish("room", said("hello"), "x")
    (direct,), _ = await chatlog.page("room", 0, 1)
    async with chatlog.tail(1, 0.5) as tail:
        (consumed,) = await tail.batch(5)
    a, b = take(direct, 8192), take(consumed, 8192)
    assert isinstance(a, Record) and a == b


async def test_tail_delivers_every_seq_once_in_order_from_any_start(chatlog: ChatLog) -> None:
    await asyncio.gather(*(chatlog.publish(f"c{i % 7}", said("x"), f"id{i}") for i in range(300)))
    assert await drain_tail(chatlog, 1, 300) == list(range(1, 301))
    assert await drain_tail(chatlog, 250, 51) == list(range(250, 301))


async def test_tail_keeps_following_live_messages(chatlog: ChatLog) -> None:
    async with chatlog.tail(1, 0.5) as tail:
        assert await tail.batch(0.2) == []
        await chatlog.publish("room", said("live"), "l1")
        got = []
        while not got:
            got = await tail.batch(2)
        assert [e.seq for e in got] == [1]


async def test_tail_breaks_when_the_server_goes_away(nats: NatsServer, chatlog: ChatLog) -> None:
    async with chatlog.tail(1, 0.3) as tail:
        await tail.batch(0.1)
        nats.kill()
        with pytest.raises(TailBroken):
            for _ in range(50):
                await tail.batch(0.2)


async def test_a_new_stream_is_a_new_epoch(chatlog: ChatLog, admin: ChatLog) -> None:
    await chatlog.publish("room", said("old"), "o1")
    before = await chatlog.info()
    await admin.delete_stream()
    with pytest.raises(LogUnavailable):
        await chatlog.info()
    after = await admin.ensure_stream(StreamSpec())
    assert after.epoch != before.epoch and after.last_seq == 0


async def test_unreachable_nats_is_log_unavailable() -> None:
    with pytest.raises(LogUnavailable):
        await ChatLog.open(LogSettings(nats_urls=("nats://127.0.0.1:1",)), "t", ADMIN)
