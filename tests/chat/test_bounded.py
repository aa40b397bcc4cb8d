"""--keep-per-channel: a node that holds only the newest records answers exactly like one
that holds everything; older pages come from the log."""

import json
from typing import Any

import websockets
from litestar.testing import TestClient

from chat.app import create_app
from chat_cluster.natsserver import NatsServer
from tests.support import (
    NodeProcs,
    all_messages,
    bearer,
    client,
    get_json,
    http,
    node_settings,
    wait_until,
)


def walk(client: TestClient[Any], channel: str, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while page := client.get(
        "/messages", params={"channel": channel, "after": after, "limit": limit}
    ).json()["messages"]:
        out += page
        after = page[-1]["seq"]
    return out


def test_bounded_node_answers_like_a_full_one(nats: NatsServer) -> None:
    bounded_app = create_app(node_settings(nats, node_id="bounded", keep_per_channel=100))
    with client(create_app(node_settings(nats))) as full, client(bounded_app) as bounded:
        for each in (full, bounded):
            wait_until(lambda c=each: c.get("/readyz").status_code == 200)
        last = 0
        for i in range(330):
            resp = full.post("/messages", json={"channel": "a" if i % 5 else "b", "text": f"{i}"})
            last = resp.json()["seq"]
        for each in (full, bounded):
            each.get("/messages", params={"min_seq": last})
        held = bounded_app.state.node.replica.channels["a"]
        assert len(held.seqs) < 264 and held.dropped_through > 0  # it really dropped some
        for channel in ("a", "b"):
            for limit in (7, 100, 1000):
                assert walk(bounded, channel, limit) == walk(full, channel, limit)
        for after in (0, 1, 50, held.dropped_through - 1, held.dropped_through, last):
            params = {"channel": "a", "after": after, "limit": 33}
            assert (
                bounded.get("/messages", params=params).json()["messages"]
                == full.get("/messages", params=params).json()["messages"]
            )
        assert bounded.get("/channels").json() == full.get("/channels").json()

        # a WebSocket join from the start gets everything, in order, then live messages
        with bounded.websocket_connect("/ws") as ws:
            ws.send_json({"op": "join", "channel": "a", "after": 0})
            assert ws.receive_json(timeout=10)["op"] == "joined"
            got = [ws.receive_json(timeout=10)["seq"] for _ in range(264)]
            assert got == [m["seq"] for m in walk(full, "a", 1000)]
            seq = full.post("/messages", json={"channel": "a", "text": "live"}).json()["seq"]
            assert ws.receive_json(timeout=10)["seq"] == seq
        # and a join without `after` the last 100
        with bounded.websocket_connect("/ws") as ws:
            ws.send_json({"op": "join", "channel": "a"})
            assert ws.receive_json(timeout=10)["op"] == "joined"
            got = [ws.receive_json(timeout=10)["seq"] for _ in range(100)]
            assert got == [m["seq"] for m in walk(full, "a", 1000)][-100:]


async def test_paging_backwards_is_the_same_on_a_bounded_node(procs: NodeProcs) -> None:
    """``before`` pages back from the newest: a node holding only the newest 100 of a
    channel reads the older pages from the log, and its answers equal a full node's."""
    full, bounded = procs.node("full"), procs.node("bounded", "--keep-per-channel", "100")
    async with websockets.connect(
        full.url.replace("http", "ws") + "/ws", additional_headers=bearer()
    ) as ws:
        for i in range(350):
            await ws.send(json.dumps({"op": "send", "channel": "back", "text": f"{i}"}))
            if i % 7 == 0:  # other channels between, so seqs of "back" are not contiguous
                await ws.send(json.dumps({"op": "send", "channel": "other", "text": "x"}))
        acks = 0
        while acks < 350 + 50:
            acks += json.loads(await ws.recv())["op"] == "ack"
    forward = [m["seq"] for m in all_messages(full.url, "back")]
    assert len(forward) == 350

    def backwards(base: str) -> list[int]:
        seqs: list[int] = []
        before = forward[-1] + 1
        while True:
            page = get_json(f"{base}/messages?channel=back&before={before}&limit=60")["messages"]
            if not page:
                return seqs
            assert [m["seq"] for m in page] == sorted(m["seq"] for m in page)
            seqs = [m["seq"] for m in page] + seqs
            before = page[0]["seq"]

    wait_until(lambda: get_json(bounded.url + "/readyz")["applied"] >= forward[-1])
    assert backwards(full.url) == forward
    assert backwards(bounded.url) == forward
    status, body = http("GET", f"{full.url}/messages?channel=back&after=5&before=100")
    assert status == 400 and "not both" in body["detail"]
