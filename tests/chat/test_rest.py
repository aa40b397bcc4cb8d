"""REST API of a chat node, in process (Litestar's test client) against a real nats-server."""

from typing import Any

import pytest
from litestar.testing import TestClient

from tests.support import bearer, token, wait_until

Client = TestClient[Any]


def post(client: Client, headers: dict[str, str] | None = None, **body: object) -> Any:
    resp = client.post("/messages", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_post_then_read_back(node: Client) -> None:
    ada = bearer(token("ada", send=("room",), name="Ada L."))
    sent = post(node, ada, channel="room", text="hello")
    assert sent["seq"] == 1 and sent["duplicate"] is False and sent["id"]
    page = node.get("/messages", params={"channel": "room", "min_seq": sent["seq"]}).json()
    assert page["channel"] == "room" and page["last_seq"] >= 1 and page["epoch"]
    [msg] = page["messages"]
    assert (msg["seq"], msg["user"], msg["text"], msg["id"]) == (1, "ada", "hello", sent["id"])
    assert msg["name"] == "Ada L."
    assert msg["stored_at"].endswith("Z")


def test_default_channel_is_the_seeds(node: Client) -> None:
    post(node, text="no channel given")
    page = node.get("/messages", params={"min_seq": 1}).json()
    assert page["channel"] == "default-channel"
    assert [m["text"] for m in page["messages"]] == ["no channel given"]


def test_same_id_returns_same_seq_as_duplicate(node: Client) -> None:
    first = post(node, channel="room", text="once", id="client-1")
    again = post(node, channel="room", text="once", id="client-1")
    assert again == {"seq": first["seq"], "id": "client-1", "duplicate": True}
    node.get("/messages", params={"channel": "room", "min_seq": first["seq"]})
    assert len(node.get("/messages", params={"channel": "room"}).json()["messages"]) == 1


def test_pagination_after_and_limit(node: Client) -> None:
    seqs = [post(node, channel="p", text=f"m{i}")["seq"] for i in range(7)]
    node.get("/messages", params={"channel": "p", "min_seq": seqs[-1]})
    first = node.get("/messages", params={"channel": "p", "limit": 3}).json()["messages"]
    rest = node.get("/messages", params={"channel": "p", "after": first[-1]["seq"]}).json()
    assert [m["seq"] for m in first + rest["messages"]] == seqs


def test_channels_lists_counts_and_last_seq(node: Client) -> None:
    post(node, channel="b", text="1")
    post(node, channel="a", text="2")
    last = post(node, channel="b", text="3")["seq"]
    node.get("/messages", params={"min_seq": last})
    assert node.get("/channels").json() == [
        {"channel": "a", "count": 1, "last_seq": 2, "online": 0},
        {"channel": "b", "count": 2, "last_seq": 3, "online": 0},
    ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_json"),
        (b"[1, 2]", "invalid_field"),
        (b'{"channel": "room"}', "invalid_field"),
        (b'{"channel": "room", "text": 5}', "invalid_field"),
        (b'{"channel": "room", "text": ""}', "invalid_field"),
        (b'{"channel": "bad channel", "text": "x"}', "invalid_channel"),
        (b'{"channel": "a.b", "text": "x"}', "invalid_channel"),
        (b'{"channel": "room", "text": "x", "colour": "red"}', "invalid_field"),
        (b'{"channel": "room", "text": "x", "id": "has space"}', "invalid_field"),
        (b'{"channel": "room", "text": "x", "sent_at": "noon"}', "invalid_field"),
        (b'{"channel": "room", "text": "' + b"x" * 8193 + b'"}', "text_too_long"),
    ],
)
def test_bad_send_is_400_with_json_and_stores_nothing(node: Client, body: bytes, code: str) -> None:
    resp = node.post("/messages", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == code and resp.json()["detail"]
    # the node still works, and the bad send left nothing in the log
    ok = post(node, channel="room", text="after")
    assert ok["seq"] == 1


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 1001}, {"after": -1}, {"limit": "x"}, {"channel": "no/slash"}],
)
def test_bad_query_is_400_with_json(node: Client, params: dict[str, object]) -> None:
    resp = node.get("/messages", params=params)
    assert resp.status_code == 400
    assert resp.json()["error"] in {"invalid_query", "invalid_channel"}


def test_unknown_route_is_json_404(node: Client) -> None:
    resp = node.get("/nope")
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"


def test_min_seq_waits_and_then_gives_up_with_503(node: Client) -> None:
    resp = node.get("/messages", params={"min_seq": 99})
    assert resp.status_code == 503 and resp.json()["error"] == "not_caught_up"


def test_readyz_reports_progress(node: Client) -> None:
    post(node, text="x")
    body = wait_until(lambda: (r := node.get("/readyz").json())["applied"] == 1 and r)
    assert body["status"] == "ready" and body["connected"] is True and body["epoch"]
    assert node.get("/healthz").status_code == 200


def test_a_node_whose_follower_ended_is_neither_ready_nor_live(node: Client) -> None:
    seq = post(node, text="before")["seq"]
    assert node.get("/messages", params={"min_seq": seq}).status_code == 200  # applied
    task = node.app.state.node.background.tasks["follower"]
    # The app's event loop runs in the test client's thread: cancel the task there.
    task.get_loop().call_soon_threadsafe(task.cancel)
    wait_until(lambda: node.get("/readyz").status_code == 503, what="not ready")
    assert node.get("/readyz").json()["status"] == "not_ready"
    live = node.get("/healthz")
    assert live.status_code == 503 and live.json()["status"] == "follower_stopped"
    # What it holds is still served (reads of a frozen replica are not wrong, only old).
    assert [m["text"] for m in node.get("/messages").json()["messages"]] == ["before"]


def test_a_plain_get_of_the_websocket_route_says_what_it_is(node: Client) -> None:
    resp = node.get("/ws")
    assert resp.status_code == 426 and resp.json()["error"] == "upgrade_required"
    assert resp.headers["upgrade"] == "websocket" and "auth" in resp.json()["detail"]


def test_the_chat_page_is_served_with_its_files_and_nothing_else(node: Client) -> None:
    page = node.get("/", headers={})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self'
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/chat.js">' in page.text
    for name, kind in (("chat.js", "text/javascript"), ("client.js", "text/javascript"),
                       ("chat.css", "text/css")):  # fmt: skip
        got = node.get(f"/static/{name}")
        assert got.status_code == 200 and got.headers["content-type"].startswith(kind), name
    assert "export class ChatClient" in node.get("/static/client.js").text
    for bad in ("/static/page.py", "/static/..%2fapi.py", "/static/index.htm"):
        answer = node.get(bad)
        assert answer.status_code == 404 and answer.json()["error"] == "not_found", bad
