"""Snapshot bootstrap: a node that loads a snapshot and replays the tail holds exactly the
state of a node that replayed the whole log, and a snapshot that does not fit is ignored."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest

from chat import snapshot
from chat.follower import Follower
from chat.replica import Replica
from chat_cluster.natsserver import NatsServer
from chatlog import ChatLog, LogEntry, SnapshotMeta
from tests.conftest import node_settings
from tests.support import until


@contextlib.asynccontextmanager
async def running(nats: NatsServer, name: str, **overrides: object) -> AsyncIterator[Follower]:
    settings = node_settings(nats, node_id=name, **overrides)
    follower = Follower(settings, Replica(settings.stream.max_text, settings.keep_per_channel))
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: follower.ready, what=f"{name} ready")
        yield follower
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if follower.chatlog is not None:
            await follower.chatlog.close()


async def publish(chatlog: ChatLog, start: int, count: int) -> int:
    last = 0
    for i in range(start, start + count):
        body = msgspec.json.encode({"text": f"m{i}", "user": "u", "id": f"id-{i}"})
        last = (await chatlog.publish(f"c{i % 7}", body, f"id-{i}")).seq
        if i % 50 == 0:  # poison and raw text, skipped or served identically everywhere
            await chatlog.publish(f"c{i % 3}", b'{"text": ""}', f"poison-{i}")
            last = (await chatlog.publish("raw", f"plain {i}".encode(), f"raw-{i}")).seq
    return last


async def state_of(replica: Replica) -> bytes:
    """The whole state, encoded; with nothing applied meanwhile, the capture is all of it."""
    captured = await snapshot.capture_live(replica)
    assert captured is not None and captured[0].seq == replica.applied
    return captured[1]


async def saver_for(follower: Follower, every: int = 1) -> snapshot.Saver:
    return snapshot.Saver(
        lambda: follower.chatlog, lambda: follower.ready, follower._replica, every
    )


async def test_snapshot_then_tail_equals_full_replay(nats: NatsServer, chatlog: ChatLog) -> None:
    await publish(chatlog, 0, 1000)
    async with running(nats, "full") as full:
        assert full.snapshot_seq == 0  # nothing to load yet: a full replay
        not_ready = snapshot.Saver(lambda: full.chatlog, lambda: False, full._replica, 1)
        assert not await not_ready.maybe_save()  # a node still catching up never saves
        assert await chatlog.snapshot_meta() is None
        saver = await saver_for(full)
        assert await saver.maybe_save()
        saved = await chatlog.snapshot_meta()
        assert saved is not None and saved.seq == full._replica.applied
        assert not await saver.maybe_save()  # nothing new since: no second upload

        last = await publish(chatlog, 1000, 150)  # the tail the new node must replay
        async with running(nats, "from-snapshot") as fresh:
            assert fresh.snapshot_seq == saved.seq
            assert fresh.target >= last
            await until(lambda: full._replica.applied >= last and fresh._replica.applied >= last)
            assert fresh._replica.applied == full._replica.applied == last
            assert await state_of(fresh._replica) == await state_of(full._replica)
            assert sum(fresh._replica.skipped.values()) > 0  # poison was part of it

            # live messages keep both equal
            last = await publish(chatlog, 1150, 20)
            await until(lambda: fresh._replica.applied >= last and full._replica.applied >= last)
            assert await state_of(fresh._replica) == await state_of(full._replica)

        # a bounded node loads the same snapshot and keeps only its newest records
        async with running(nats, "bounded", keep_per_channel=100) as bounded:
            assert bounded.snapshot_seq == saved.seq
            await until(lambda: bounded._replica.applied >= last)
            held = bounded._replica.channels["c1"]
            assert 0 < len(held.seqs) <= 125 and held.dropped_through > 0
            assert list(held.seqs) == list(full._replica.channels["c1"].seqs[-len(held.seqs) :])
            after = held.dropped_through
            assert bounded._replica.read("c1", after, 1000) == full._replica.read("c1", after, 1000)
            assert not await (await saver_for(bounded)).maybe_save()  # bounded nodes never save


async def test_unusable_snapshots_are_ignored(nats: NatsServer, chatlog: ChatLog) -> None:
    last = await publish(chatlog, 0, 60)
    async with running(nats, "a") as first:
        assert await (await saver_for(first)).maybe_save()
    info = await chatlog.info()
    good = await chatlog.load_snapshot()
    assert good is not None and good[0].seq == last

    cases = {
        "other epoch": (SnapshotMeta("2000-01-01T00:00:00Z", last, snapshot.FORMAT), good[1]),
        "other format": (SnapshotMeta(info.epoch, last, snapshot.FORMAT + 1), good[1]),
        "beyond the stream": (SnapshotMeta(info.epoch, last + 10, snapshot.FORMAT), good[1]),
        "body of another seq": (SnapshotMeta(info.epoch, last - 1, snapshot.FORMAT), good[1]),
        "garbage body": (SnapshotMeta(info.epoch, last, snapshot.FORMAT), b"\x93not msgpack"),
    }
    for case, (meta, body) in cases.items():
        await chatlog.save_snapshot(meta, body)
        async with running(nats, f"after {case}") as follower:
            assert follower.snapshot_seq == 0, case  # replayed everything instead
            assert follower._replica.applied == last, case
            assert len(follower._replica.channels["c1"].seqs) == 9, case


async def test_new_epoch_ignores_the_old_snapshot(nats: NatsServer, chatlog: ChatLog) -> None:
    await publish(chatlog, 0, 30)
    async with running(nats, "a") as first:
        assert await (await saver_for(first)).maybe_save()
    await chatlog.delete_stream()
    info = await chatlog.ensure_stream()
    last = await publish(chatlog, 0, 5)
    async with running(nats, "b") as follower:
        assert follower.snapshot_seq == 0
        assert follower._replica.epoch == info.epoch and follower._replica.applied == last


async def test_a_snapshot_saved_while_messages_arrive_is_exact(
    nats: NatsServer, chatlog: ChatLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks: the capture yields to the event loop many times, and the follower
    # applies what arrives in between.
    monkeypatch.setattr(snapshot, "CHUNK", 7)
    await publish(chatlog, 0, 600)
    async with running(nats, "full") as full:
        saver = await saver_for(full)
        more = asyncio.create_task(publish(chatlog, 600, 300))
        await until(lambda: full._replica.applied > 650, what="some of the new messages")
        assert await saver.maybe_save()
        saved = await chatlog.snapshot_meta()
        last = await more
        assert saved is not None and saved.seq < last  # taken while the log moved on
        async with running(nats, "from-snapshot") as fresh:
            assert fresh.snapshot_seq == saved.seq
            await until(lambda: full._replica.applied >= last and fresh._replica.applied >= last)
            assert await state_of(fresh._replica) == await state_of(full._replica)


async def test_live_capture_is_the_state_at_its_seq_whatever_is_applied_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(snapshot, "CHUNK", 3)

    def entry(seq: int) -> LogEntry:
        data = b'{"text": ""}' if seq % 11 == 0 else f'{{"text": "t{seq}"}}'.encode()
        channel = "late" if seq == 205 else f"c{seq % 5}"  # a channel born mid-capture
        return LogEntry(seq=seq, subject=f"chat.{channel}", data=data, stored_ns=seq * 1000)

    live, reference = Replica(8192), Replica(8192)
    for replica in (live, reference):
        replica.reset("2026-11-28T00:00:00Z", 8192)
        replica.apply([entry(seq) for seq in range(1, 201)])
    capture = asyncio.create_task(snapshot.capture_live(live))
    await asyncio.sleep(0)  # the capture starts, at seq 200
    seq = 200
    while not capture.done():  # every yield of the capture lets one more message in
        seq += 1
        live.apply([entry(seq)])
        await asyncio.sleep(0)
    result = capture.result()
    assert result is not None and seq > 230  # it really yielded, and the log moved on
    meta, body = result
    assert meta.seq == 200 and body == await state_of(reference)
    assert b"late" not in body and "late" in live.channels
    again = await snapshot.capture_live(live)  # nothing moves now: the whole replica
    assert again is not None and again[1] == await state_of(live)
