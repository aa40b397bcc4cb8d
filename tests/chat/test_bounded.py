"""--keep-per-channel: a node that holds only the newest records answers exactly like one
that holds everything; older pages come from the log."""

from typing import Any

from litestar.testing import TestClient

from chat.app import create_app
from chat_cluster.natsserver import NatsServer
from tests.support import client, node_settings, wait_until


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
