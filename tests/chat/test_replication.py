"""Replicas as real processes: late joiners, poison, NATS restarts, a replaced stream."""

import asyncio
import json
from typing import Any

import websockets

from chat_cluster.local import Service
from chat_cluster.natsserver import NatsServer
from chatlog import ChatLog, StreamSpec
from tests.support import NodeProcs, all_messages, bearer, get_json, http, said, wait_until


def history(node: Service, channel: str = "room") -> list[tuple[int, str]]:
    return [(m["seq"], m["text"]) for m in all_messages(node.url, channel)]


def progress(node: Service) -> Any:
    return http("GET", node.url + "/readyz")[1]


async def test_a_node_started_late_serves_all_history_once_ready(
    chatlog: ChatLog, procs: NodeProcs
) -> None:
    for i in range(500):
        await chatlog.publish("room", said(f"m{i}"), f"id{i}")
    late = procs.node("late")  # returns once /readyz is 200
    got = history(late)
    assert [s for s, _ in got] == list(range(1, 501))
    assert got[-1] == (500, "m499")


async def test_poison_is_skipped_identically_on_every_node(
    chatlog: ChatLog, publisher: ChatLog, admin: ChatLog, procs: NodeProcs
) -> None:
    a = procs.node("a")
    await chatlog.publish("room", said("before"), "b")
    for bad in (b"\xff\xfe not utf-8", b'{"text": 5}', b'{"user": "x"}', b"y" * 9000):
        await publisher.publish_raw("room", bad)  # what `nats pub chat.room ...` does
    # A subject no message may have: only an admin can publish there.
    await admin.publish_raw_subject("chat.a.b", b"bad subject")
    last = await chatlog.publish("room", said("after"), "c")
    b = procs.node("b")
    for node in (a, b):
        # The raw publishes are core NATS publishes from other connections (no ack): the
        # admin's may be stored after "after", so wait for all seven entries, not a seq.
        wait_until(
            lambda n=node: (p := progress(n))["applied"] >= last.seq and p["skipped"] == 5,
            what=f"{node.name} applied",
        )
        assert history(node) == [(1, "before"), (last.seq, "after")]
    for node in (a, b):  # and both still take writes
        assert http("POST", node.url + "/messages", {"channel": "room", "text": "ok"})[0] == 201


async def test_nodes_recover_when_nats_restarts_on_the_same_store(
    nats: NatsServer, procs: NodeProcs
) -> None:
    a, b = procs.node("a"), procs.node("b")
    for i in range(20):
        assert http("POST", a.url + "/messages", {"channel": "room", "text": f"x{i}"})[0] == 201
    nats.kill()
    wait_until(lambda: http("GET", a.url + "/readyz")[0] == 503, what="a notices")
    nats.start()
    nats.wait_ready()
    for node in (a, b):
        wait_until(lambda n=node: http("GET", n.url + "/readyz")[0] == 200, what="ready again")
    status, sent = http("POST", b.url + "/messages", {"channel": "room", "text": "after"})
    assert status == 201 and sent["seq"] == 21
    for node in (a, b):
        wait_until(lambda n=node: len(history(n)) == 21, what="converged")
        assert [s for s, _ in history(node)] == list(range(1, 22))


async def test_a_replaced_stream_is_a_new_epoch_everywhere(
    chatlog: ChatLog, admin: ChatLog, procs: NodeProcs
) -> None:
    a = procs.node("a")
    await chatlog.publish("room", said("old log"), "o")
    wait_until(lambda: progress(a)["applied"] == 1)
    old_epoch = progress(a)["epoch"]
    ws = await websockets.connect(a.url.replace("http", "ws") + "/ws", additional_headers=bearer())
    await ws.send(json.dumps({"op": "join", "channel": "room", "after": 0}))
    assert json.loads(await ws.recv())["epoch"] == old_epoch
    assert json.loads(await ws.recv())["text"] == "old log"
    await admin.delete_stream()
    await admin.ensure_stream(StreamSpec())
    new_epoch = (await chatlog.info()).epoch
    await chatlog.publish("room", said("new log"), "n")
    # a joined socket is closed with 1012: its seqs belong to the old log
    try:
        async with asyncio.timeout(15):
            await ws.recv()
        raise AssertionError("the socket of the old epoch stayed open")
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 1012
    wait_until(lambda: progress(a)["epoch"] == new_epoch != old_epoch, what="new epoch")
    wait_until(lambda: history(a) == [(1, "new log")], what="only the new log")
    page = get_json(a.url + "/messages?channel=room")
    assert page["epoch"] == new_epoch
    metrics = http("GET", a.url + "/metrics")[1].decode().splitlines()
    assert 'chat_replica_rebuilds_total{reason="epoch"} 1' in metrics
    assert 'chat_ws_closed_total{reason="log_replaced"} 1' in metrics


async def test_concurrent_writers_through_many_nodes_converge_in_one_order(
    procs: NodeProcs,
) -> None:
    nodes = [procs.node(f"n{i}") for i in range(3)]

    def write(node: Service, k: int) -> None:
        for i in range(30):
            status, _ = http(
                "POST", node.url + "/messages", {"channel": "room", "text": f"{k}-{i}"}
            )
            assert status == 201

    await asyncio.gather(*(asyncio.to_thread(write, n, k) for k, n in enumerate(nodes)))
    for node in nodes:
        wait_until(lambda n=node: len(history(n)) == 90, what="all 90")
    first = history(nodes[0])
    assert [s for s, _ in first] == list(range(1, 91))
    assert all(history(n) == first for n in nodes[1:])
