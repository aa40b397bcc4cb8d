"""The WebSocket protocol, in process: join, history, live, resume, leave, send, bad frames."""

from typing import Any

import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient, WebSocketTestSession

Client = TestClient[Any]


def post(client: Client, channel: str, text: str) -> int:
    resp = client.post("/messages", json={"channel": channel, "text": text})
    assert resp.status_code == 201, resp.text
    seq: int = resp.json()["seq"]
    return seq


def recv(ws: WebSocketTestSession) -> Any:
    return ws.receive_json(timeout=10)


def messages(ws: WebSocketTestSession, n: int) -> list[Any]:
    out = []
    while len(out) < n:
        frame = recv(ws)
        assert frame["op"] == "message", frame
        out.append(frame)
    return out


def test_join_sends_history_then_live(node: Client) -> None:
    for i in range(3):
        post(node, "room", f"old {i}")
    with node.websocket_connect("/ws") as ws:
        ws.send_json({"op": "join", "channel": "room"})
        joined = recv(ws)
        assert joined["op"] == "joined" and joined["channel"] == "room" and joined["epoch"]
        assert [m["text"] for m in messages(ws, 3)] == ["old 0", "old 1", "old 2"]
        seq = post(node, "room", "live")
        post(node, "elsewhere", "not joined")
        [live] = messages(ws, 1)
        assert (live["seq"], live["text"], live["channel"]) == (seq, "live", "room")


def test_join_without_after_gives_the_last_100(node: Client) -> None:
    seqs = [post(node, "big", str(i)) for i in range(105)]
    node.get("/messages", params={"min_seq": seqs[-1]})
    with node.websocket_connect("/ws") as ws:
        ws.send_json({"op": "join", "channel": "big"})
        assert recv(ws)["op"] == "joined"
        assert [m["seq"] for m in messages(ws, 100)] == seqs[5:]


def test_resume_with_after_has_no_gap_and_no_duplicate(node: Client) -> None:
    seqs = [post(node, "r", str(i)) for i in range(10)]
    with node.websocket_connect("/ws") as ws:
        ws.send_json({"op": "join", "channel": "r", "after": seqs[3]})
        assert recv(ws)["op"] == "joined"
        got = [m["seq"] for m in messages(ws, 6)]
        more = [post(node, "r", "new") for _ in range(3)]
        got += [m["seq"] for m in messages(ws, 3)]
    assert got == seqs[4:] + more


def test_resume_after_a_seq_the_node_has_not_applied_yet(node: Client) -> None:
    # A client coming from a node that was further ahead: nothing up to `after` again.
    with node.websocket_connect("/ws") as ws:
        ws.send_json({"op": "join", "channel": "r", "after": 2})
        assert recv(ws)["op"] == "joined"
        post(node, "r", "1")
        post(node, "r", "2")
        third = post(node, "r", "3")
        [msg] = messages(ws, 1)
        assert msg["seq"] == third


def test_send_is_acked_after_the_log_stored_it(node: Client) -> None:
    with node.websocket_connect("/ws") as ws:
        ws.send_json({"op": "join", "channel": "c", "after": 0})
        assert recv(ws)["op"] == "joined"
        ws.send_json({"op": "send", "channel": "c", "text": "hi", "id": "w-1"})
        frames = [recv(ws), recv(ws)]
        ack = next(f for f in frames if f["op"] == "ack")
        msg = next(f for f in frames if f["op"] == "message")
        assert ack == {"op": "ack", "id": "w-1", "seq": msg["seq"], "duplicate": False}
        ws.send_json({"op": "send", "channel": "c", "text": "hi", "id": "w-1"})
        assert recv(ws) == {"op": "ack", "id": "w-1", "seq": msg["seq"], "duplicate": True}


def test_leave_stops_delivery(node: Client) -> None:
    with node.websocket_connect("/ws") as ws:
        ws.send_json({"op": "join", "channel": "a", "after": 0})
        ws.send_json({"op": "join", "channel": "b", "after": 0})
        assert {recv(ws)["channel"], recv(ws)["channel"]} == {"a", "b"}
        ws.send_json({"op": "leave", "channel": "a"})
        assert recv(ws) == {"op": "left", "channel": "a"}
        post(node, "a", "unseen")
        seq = post(node, "b", "seen")
        [msg] = messages(ws, 1)
        assert (msg["channel"], msg["seq"]) == ("b", seq)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ('{"op": "dance"}', "invalid_frame"),
        ('{"channel": "x"}', "invalid_frame"),
        ('{"op": "join", "channel": "no spaces"}', "invalid_channel"),
        ('{"op": "join", "channel": "ok", "after": -5}', "invalid_after"),
        ('{"op": "join", "channel": "ok", "after": "x"}', "invalid_frame"),
        (
            '{"op": "send", "channel": "ok", "text": "' + "x" * 8193 + '", "id": "big"}',
            "text_too_long",
        ),
        ('{"op": "send", "channel": "ok", "text": ""}', "invalid_frame"),
        ('{"op": "send", "channel": "a.b", "text": "x", "id": "i"}', "invalid_channel"),
    ],
)
def test_bad_frame_gets_an_error_frame_and_the_socket_stays_open(
    node: Client, frame: str, code: str
) -> None:
    with node.websocket_connect("/ws") as ws:
        ws.send_text(frame)
        err = recv(ws)
        assert err["op"] == "error" and err["code"] == code and err["detail"]
        if code == "text_too_long":
            assert err["id"] == "big"
        if "dance" in frame:  # an unknown op names the valid ones
            assert "join, leave, send, auth, refresh" in err["detail"], err
        ws.send_json({"op": "send", "channel": "ok", "text": "still here", "id": "s"})
        assert recv(ws)["op"] == "ack"
    # nothing from the bad frame was stored
    texts = [m["text"] for m in node.get("/messages", params={"channel": "ok"}).json()["messages"]]
    assert texts == ["still here"]


def test_a_client_that_keeps_sending_bad_frames_is_closed_with_1008(node: Client) -> None:
    with node.websocket_connect("/ws") as ws:
        for _ in range(10):
            ws.send_text("garbage")
        for _ in range(10):
            assert recv(ws)["code"] == "invalid_json"
        with pytest.raises(WebSocketDisconnect) as info:
            recv(ws)
        assert info.value.code == 1008
    # and /metrics counts it by reason
    assert 'chat_ws_closed_total{reason="abuse"} 1' in node.get("/metrics").text.splitlines()
