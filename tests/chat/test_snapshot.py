"""Snapshot bootstrap: a node that loads a snapshot and replays the tail holds exactly the
state of a node that replayed the whole log, and a snapshot that does not fit is ignored."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest
from opentelemetry.metrics import NoOpMeterProvider

from chat import snapshot
from chat.node import Node
from chat.replica import Replica
from chat.saver import Saver
from chat_cluster.natsserver import NatsServer
from chatlog import ChatLog, LogEntry, SnapshotMeta, StreamSpec, digest
from tests.support import node_settings, said, until


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Digest blocks (and so snapshot points) every 16 entries instead of every 1,024."""
    monkeypatch.setattr(digest, "BLOCK", 16)


@contextlib.asynccontextmanager
async def running(nats: NatsServer, name: str, **overrides: object) -> AsyncIterator[Node]:
    """A node's parts without its HTTP side; it saves snapshots only when a test asks."""
    settings = node_settings(nats, node_id=name, snapshot_every=0, **overrides)
    node = Node.create(settings, NoOpMeterProvider().get_meter("test"), tracing=False)
    await node.start()
    try:
        await until(lambda: node.follower.ready, what=f"{name} ready")
        yield node
    finally:
        await node.stop()


async def publish(chatlog: ChatLog, start: int, count: int) -> int:
    last = 0
    for i in range(start, start + count):
        body = msgspec.json.encode({"text": f"m{i}", "user": "u", "id": f"id-{i}"})
        last = (await chatlog.publish(f"c{i % 7}", body, f"id-{i}")).seq
        if i % 50 == 0:  # poison and raw text, skipped or served identically everywhere
            await chatlog.publish(f"c{i % 3}", b'{"text": ""}', f"poison-{i}")
            last = (await chatlog.publish("raw", said(f"plain {i}"), f"raw-{i}")).seq
    return last


async def state_of(replica: Replica) -> bytes:
    """The whole state, encoded; with nothing applied meanwhile, the capture is all of it."""
    captured = await snapshot.capture_live(replica, replica.position())
    assert captured is not None and captured[0].seq == replica.applied
    return captured[1]


def saver_for(node: Node, every: int = 1) -> Saver:
    return Saver(node.chatlog, node.follower, node.replica, every)


async def test_snapshot_then_tail_equals_full_replay(nats: NatsServer, chatlog: ChatLog) -> None:
    await publish(chatlog, 0, 1000)
    async with running(nats, "full") as full:
        assert full.follower.snapshot_seq == 0  # nothing to load yet: a full replay
        full.follower.target = full.replica.applied + 1  # as if the stream were ahead
        assert not await saver_for(full).maybe_save()  # a node catching up never saves
        full.follower.target = full.replica.applied
        assert await chatlog.snapshot_meta() is None
        saver = saver_for(full)
        assert await saver.maybe_save()
        saved = await chatlog.snapshot_meta()
        # At the newest digest block boundary, at most a block back.
        assert saved is not None and saved.seq == full.replica.checkpoint.seq
        assert full.replica.applied - 16 < saved.seq <= full.replica.applied
        assert saved.count == full.replica.checkpoint.count and saved.count % 16 == 0
        assert not await saver.maybe_save()  # nothing new since: no second upload

        last = await publish(chatlog, 1000, 150)  # the tail the new node must replay
        async with running(nats, "from-snapshot") as fresh:
            assert fresh.follower.snapshot_seq == saved.seq
            assert fresh.follower.target >= last
            await until(lambda: full.replica.applied >= last and fresh.replica.applied >= last)
            assert fresh.replica.applied == full.replica.applied == last
            assert await state_of(fresh.replica) == await state_of(full.replica)
            # and the same digest: loaded state plus the tail is what a replay computes
            assert fresh.replica.digest.hexdigest(8192) == full.replica.digest.hexdigest(8192)
            assert sum(fresh.replica.skipped.values()) > 0  # poison was part of it

            # live messages keep both equal
            last = await publish(chatlog, 1150, 20)
            await until(lambda: fresh.replica.applied >= last and full.replica.applied >= last)
            assert await state_of(fresh.replica) == await state_of(full.replica)

        # a bounded node loads the same snapshot and keeps only its newest records
        async with running(nats, "bounded", keep_per_channel=100) as bounded:
            assert bounded.follower.snapshot_seq == saved.seq
            await until(lambda: bounded.replica.applied >= last)
            held = bounded.replica.channels["c1"]
            assert 0 < len(held.seqs) <= 125 and held.dropped_through > 0
            assert list(held.seqs) == list(full.replica.channels["c1"].seqs[-len(held.seqs) :])
            after = held.dropped_through
            assert bounded.replica.read("c1", after, 1000) == full.replica.read("c1", after, 1000)
            assert not await saver_for(bounded).maybe_save()  # bounded nodes never save


async def test_unusable_snapshots_are_ignored(
    nats: NatsServer, chatlog: ChatLog, admin: ChatLog
) -> None:
    last = await publish(chatlog, 0, 60)
    async with running(nats, "a") as first:
        assert await saver_for(first).maybe_save()
    good = await chatlog.load_snapshot()
    assert good is not None
    meta, body = good
    at = meta.seq

    def like(**changed: object) -> SnapshotMeta:
        return msgspec.structs.replace(meta, **changed)

    cases = {
        "other epoch": (chatlog, like(epoch="2000-01-01T00:00:00Z"), body),
        "other format": (chatlog, like(format=snapshot.FORMAT + 1), body),
        "beyond the stream": (chatlog, like(seq=last + 10), body),
        "body of another seq": (chatlog, like(seq=at - 1), body),
        "garbage body": (chatlog, meta, b"\x93not msgpack"),
        # a well-formed snapshot, signed by someone who is not a node
        "signed by an admin": (admin, meta, body),
    }
    for case, (writer, bad_meta, bad_body) in cases.items():
        assert await writer.save_snapshot(bad_meta, bad_body)
        async with running(nats, f"after {case}") as node:
            assert node.follower.snapshot_seq == 0, case  # replayed everything instead
            assert node.replica.applied == last, case
            assert len(node.replica.channels["c1"].seqs) == 9, case
            # A forgery and a signed one that contradicts itself are counted (and logged);
            # the rest are merely not for this log.
            rejected = {
                "signed by an admin": {"snapshot_rejected": 1},
                "body of another seq": {"inconsistent": 1},
                "garbage body": {"inconsistent": 1},
            }.get(case, {})
            assert node.follower.snapshot_rejections == rejected, case


async def test_new_epoch_ignores_the_old_snapshot(
    nats: NatsServer, chatlog: ChatLog, admin: ChatLog
) -> None:
    await publish(chatlog, 0, 30)
    async with running(nats, "a") as first:
        assert await saver_for(first).maybe_save()
    await admin.delete_stream()
    info = await admin.ensure_stream(StreamSpec())
    last = await publish(chatlog, 0, 5)
    async with running(nats, "b") as node:
        assert node.follower.snapshot_seq == 0
        assert node.replica.epoch == info.epoch and node.replica.applied == last


async def test_a_snapshot_saved_while_messages_arrive_is_exact(
    nats: NatsServer, chatlog: ChatLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks: the capture yields to the event loop many times, and the follower
    # applies what arrives in between.
    monkeypatch.setattr(snapshot, "CHUNK", 7)
    await publish(chatlog, 0, 600)
    async with running(nats, "full") as full:
        saver = saver_for(full)
        more = asyncio.create_task(publish(chatlog, 600, 300))
        await until(lambda: full.replica.applied > 650, what="some of the new messages")
        assert await saver.maybe_save()
        saved = await chatlog.snapshot_meta()
        last = await more
        assert saved is not None and saved.seq < last  # taken while the log moved on
        async with running(nats, "from-snapshot") as fresh:
            assert fresh.follower.snapshot_seq == saved.seq
            await until(lambda: full.replica.applied >= last and fresh.replica.applied >= last)
            assert await state_of(fresh.replica) == await state_of(full.replica)


async def test_live_capture_is_the_state_at_its_seq_whatever_is_applied_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(snapshot, "CHUNK", 3)

    def entry(seq: int) -> LogEntry:
        data = b'{"text": ""}' if seq % 11 == 0 else f'{{"text": "t{seq}"}}'.encode()
        channel = "late" if seq == 205 else f"c{seq % 5}"  # a channel born mid-capture
        return LogEntry(seq=seq, subject=f"chat.{channel}.node", data=data, stored_ns=seq * 1000)

    live, reference = Replica(8192), Replica(8192)
    for replica, up_to in ((live, 200), (reference, 192)):
        replica.reset("2026-11-28T00:00:00Z", 8192)
        replica.apply([entry(seq) for seq in range(1, up_to + 1)])
    capture = asyncio.create_task(snapshot.capture_live(live))
    await asyncio.sleep(0)  # the capture starts, at its checkpoint: seq 192 (blocks of 16)
    seq = 200
    while not capture.done():  # every yield of the capture lets one more message in
        seq += 1
        live.apply([entry(seq)])
        await asyncio.sleep(0)
    result = capture.result()
    assert result is not None and seq > 230  # it really yielded, and the log moved on
    meta, body = result
    assert meta.seq == 192 and body == await state_of(reference)
    assert meta.chain == reference.digest.chain.hex() and meta.count == 192
    assert b"late" not in body and "late" in live.channels
    again = await snapshot.capture_live(live, live.position())  # the whole replica now
    assert again is not None and again[1] == await state_of(live)
