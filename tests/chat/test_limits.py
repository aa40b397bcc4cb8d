"""Connection and socket limits against real node processes over real sockets: header and
body deadlines, the connection cap, sockets per user, joins per socket, history pacing,
a client that stops reading, and the lag /readyz reports."""

import asyncio
import contextlib
import json
import socket
from typing import Any

import pytest
import websockets

from chat.node import readiness
from chat_cluster.local import Service
from tests.chat.test_sockets import RawClient, join, recv, ws_url
from tests.support import ADMIN_TOKEN, NodeProcs, all_messages, bearer, http, metric, token, until


def refused(base: str, reason: str) -> float:
    return metric(base, "chat_limits_refused_total", reason=reason)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def problem(answer: bytes) -> tuple[str, dict[str, Any]]:
    head, body = answer.split(b"\r\n\r\n", 1)
    return head.split(b"\r\n", 1)[0].decode(), json.loads(body)


async def test_headers_that_never_end_are_answered_408_and_closed(procs: NodeProcs) -> None:
    node = procs.node("a", "--header-timeout", "1")
    silent = socket.create_connection(("127.0.0.1", node.port), timeout=15)
    partial = socket.create_connection(("127.0.0.1", node.port), timeout=15)
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    try:
        for sock in (silent, partial):
            status, body = problem(await asyncio.to_thread(read_all, sock))
            assert status == "HTTP/1.1 408 Request Timeout" and body["error"] == "header_timeout"
    finally:
        silent.close()
        partial.close()
    # A client that behaves is served, and each cut is counted.
    assert (await asyncio.to_thread(http, "GET", node.url + "/healthz"))[0] == 200
    assert await asyncio.to_thread(refused, node.url, "header_timeout") == 2


async def test_a_pipelined_request_the_app_holds_is_not_cut(procs: NodeProcs) -> None:
    """The header deadline is the client's: a second request pipelined behind a slow one
    was read whole, and the app holding it longer than HEADER_TIMEOUT is no reason to cut
    the connection."""
    node = procs.node("a", "--header-timeout", "1", "--min-seq-wait", "2")
    far = (
        f"GET /messages?channel=p&min_seq={10**9} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    )
    last = far.replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n")
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=15)
    try:
        sock.sendall((far + last).encode())
        answer = await asyncio.to_thread(read_all, sock)
    finally:
        sock.close()
    assert answer.count(b"HTTP/1.1 503 ") == 2 and b" 408 " not in answer, answer
    assert answer.count(b'"not_caught_up"') == 2


async def test_a_body_that_never_ends_is_cut_and_nothing_is_stored(procs: NodeProcs) -> None:
    node = procs.node("a", "--read-timeout", "1")
    body = json.dumps({"channel": "slow", "text": "never finished"}).encode()
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=15)
    sock.sendall(
        b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    try:
        answer = await asyncio.to_thread(read_all, sock)  # returns once the node closes
    finally:
        sock.close()
    assert b" 201 " not in answer
    assert await asyncio.to_thread(refused, node.url, "read_timeout") == 1
    assert await asyncio.to_thread(all_messages, node.url, "slow") == []


async def test_connections_beyond_the_cap_get_503_and_the_node_recovers(procs: NodeProcs) -> None:
    node = procs.node("a", "--max-connections", "20")
    held = [socket.create_connection(("127.0.0.1", node.port), timeout=15) for _ in range(20)]
    try:
        # The cap counts what the node has accepted; the sockets above may still be on
        # their way in, so wait for the first refusal rather than assume it.
        def one_more() -> tuple[str, dict[str, Any]] | None:
            sock = socket.create_connection(("127.0.0.1", node.port), timeout=15)
            try:
                answer = read_all(sock)
            except ConnectionResetError:
                return None
            finally:
                sock.close()
            return problem(answer) if answer.startswith(b"HTTP/1.1 503") else None

        extra = None
        async with asyncio.timeout(15):
            while extra is None:
                extra = await asyncio.to_thread(one_more)
        assert extra[1]["error"] == "too_many_connections", extra
    finally:
        for sock in held:
            sock.close()
    await until(lambda: http("GET", node.url + "/healthz")[0] == 200, what="served again")
    assert await asyncio.to_thread(refused, node.url, "connections") >= 1


async def test_connections_beyond_the_cap_of_one_address_get_a_readable_503(
    procs: NodeProcs,
) -> None:
    """One address may not hold the node's whole cap. The refused client sent its request
    at once, and still reads the 503 (not a reset): the node half-closes and drains."""
    node = procs.node("a", "--max-connections-per-address", "5")
    held = [socket.create_connection(("127.0.0.1", node.port), timeout=15) for _ in range(5)]
    try:
        # The metrics are out of reach from this address now: every attempt must be
        # refused, and each refusal readable.
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", node.port), timeout=15)
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status, body = problem(await asyncio.to_thread(read_all, sock))
            finally:
                sock.close()
            assert status == "HTTP/1.1 503 Service Unavailable", status
            assert "MAX_CONNECTIONS_PER_ADDRESS" in body["detail"]
    finally:
        for sock in held:
            sock.close()
    await until(lambda: http("GET", node.url + "/healthz")[0] == 200, what="served again")
    assert await asyncio.to_thread(refused, node.url, "connections_per_address") == 20


async def test_pipelined_requests_are_bounded_per_connection(procs: NodeProcs) -> None:
    """uvicorn queues every pipelined request it parses: 400,000 on one connection grew a
    node to 1 GB. Beyond 16 waiting, the connection gets 400 too_many_pipelined."""
    node = procs.node("a")
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=15)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
        answer = await asyncio.to_thread(read_all, sock)
    finally:
        sock.close()
    assert answer.count(b"HTTP/1.1 200 OK") <= 17, answer.count(b"HTTP/1.1 200 OK")
    assert b'"too_many_pipelined"' in answer
    assert await asyncio.to_thread(refused, node.url, "pipelined") == 1
    logged = node.log_path.read_text()
    assert "Exception in ASGI application" not in logged, logged[-3000:]


async def test_a_client_that_never_reads_its_answers_is_dropped(procs: NodeProcs) -> None:
    """An 8 MB answer that is never read fills every buffer on the way; after
    WRITE_TIMEOUT the node drops the connection (close() would wait for ever)."""
    node = procs.node("a", "--write-timeout", "1")
    async with websockets.connect(ws_url(node.url), additional_headers=bearer()) as ws:
        for _ in range(1000):
            await ws.send(json.dumps({"op": "send", "channel": "big", "text": "x" * 8000}))
        for _ in range(1000):
            assert (await recv(ws, 30))["op"] == "ack"
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=15)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(
            b"GET /messages?channel=big&limit=1000 HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode()
        )
        await until(lambda: refused(node.url, "write_timeout") == 1, what="dropped")
    finally:
        sock.close()


@pytest.mark.parametrize("anonymous", [False, True], ids=["per-user", "per-address"])
async def test_sockets_per_user_are_capped(procs: NodeProcs, anonymous: bool) -> None:
    """WS_PER_USER: a third socket of one user (of one address with --no-auth) gets
    too_many_sockets and 1008; another user is not affected; a closed one frees a slot."""
    node = procs.node("a", "--ws-per-user", "2", *(["--no-auth"] if anonymous else []))
    mine = bearer(None if anonymous else token("alice", read=("*",)))
    first = await websockets.connect(ws_url(node.url), additional_headers=mine)
    second = await websockets.connect(ws_url(node.url), additional_headers=mine)
    try:
        await join(first, "room")
        async with websockets.connect(ws_url(node.url), additional_headers=mine) as third:
            frame = await recv(third)
            assert frame["op"] == "error" and frame["code"] == "too_many_sockets", frame
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(third)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        if not anonymous:
            other = bearer(token("bob", read=("*",)))
            async with websockets.connect(ws_url(node.url), additional_headers=other) as ws:
                await join(ws, "room")
        await second.close()

        async def accepted() -> bool:
            async with websockets.connect(ws_url(node.url), additional_headers=mine) as ws:
                await ws.send(json.dumps({"op": "join", "channel": "room"}))
                return (await recv(ws))["op"] == "joined"

        # The node forgets the closed socket a moment after its close handshake.
        await until(lambda: metric(node.url, "chat_ws_connections") == 1, what="second gone")
        assert await accepted()
        await join(first, "other")  # the first socket was never disturbed
    finally:
        await first.close()
        await second.close()
    assert await asyncio.to_thread(refused, node.url, "ws_per_user") >= 1


async def test_joins_beyond_the_rate_get_rate_limited_and_the_socket_stays(
    procs: NodeProcs,
) -> None:
    """100 joins at once (a reconnecting client's channels), then WS_JOIN_RATE."""
    node = procs.node("a", "--join-rate", "0.5")
    async with websockets.connect(ws_url(node.url), additional_headers=bearer()) as ws:
        for i in range(100):
            await ws.send(json.dumps({"op": "join", "channel": f"c{i}"}))
        frames = [await recv(ws) for _ in range(100)]
        assert [f["op"] for f in frames] == ["joined"] * 100
        await ws.send(json.dumps({"op": "join", "channel": "c0"}))
        limited = await recv(ws)
        assert limited["op"] == "error" and limited["code"] == "rate_limited", limited
        status, sent = await asyncio.to_thread(
            http, "POST", node.url + "/messages", {"channel": "c5", "text": "still here"}
        )
        assert status == 201
        frame = await recv(ws)
        assert frame["op"] == "message" and frame["seq"] == sent["seq"]
    assert await asyncio.to_thread(refused, node.url, "join_rate") == 1


async def test_history_from_the_log_is_paced_and_complete(procs: NodeProcs) -> None:
    """A node holding the newest 100 per channel reads older pages from the log at
    WS_HISTORY_RATE: pages wait (counted), and every message still arrives once, in order."""
    node = procs.node("a", "--keep-per-channel", "100", "--history-rate", "2")
    async with websockets.connect(ws_url(node.url), additional_headers=bearer()) as ws:
        for i in range(900):
            await ws.send(json.dumps({"op": "send", "channel": "old", "text": f"{i}"}))
        acks = [await recv(ws) for _ in range(900)]
        assert all(a["op"] == "ack" for a in acks)
    async with websockets.connect(ws_url(node.url), additional_headers=bearer()) as ws:
        await join(ws, "old", after=0)
        texts = [(await recv(ws, 30))["text"] for _ in range(900)]
    assert texts == [str(i) for i in range(900)]
    assert await asyncio.to_thread(refused, node.url, "history_rate") >= 1


async def test_a_client_that_stops_reading_during_a_history_join_gets_1013(
    procs: NodeProcs,
) -> None:
    """Not uvicorn's keepalive 1011 (after 40 s): WS_SEND_TIMEOUT after the socket last
    took a frame, the documented 1013, which tells the client to resume with ``after``."""
    node = procs.node("a", "--ws-send-timeout", "1")
    frames, code = await stalled_history_join(node)
    assert code == 1013 and frames < 2000
    assert (await asyncio.to_thread(http, "GET", node.url + "/readyz"))[0] == 200


async def stalled_history_join(node: Service) -> tuple[int, int]:
    """A client joins a 16 MB history (more than the kernel buffers hold) and does not
    read until the node has closed it; then it reads: (message frames seen, close code)."""
    async with websockets.connect(ws_url(node.url), additional_headers=bearer()) as sender:
        text = "x" * 8000
        for _ in range(2000):
            await sender.send(json.dumps({"op": "send", "channel": "big", "text": text}))
        for _ in range(2000):
            assert (await recv(sender, 30))["op"] == "ack"
    slow = RawClient(node.port)
    try:
        slow.send_text(json.dumps({"op": "auth", "token": ADMIN_TOKEN}))
        slow.send_text(json.dumps({"op": "join", "channel": "big", "after": 0}))
        await until(lambda: closed_overflow(node.url) == 1, what="the stalled socket closed")
        return await asyncio.to_thread(slow.read_until_close)
    finally:
        slow.file.close()
        slow.sock.close()


def closed_overflow(base: str) -> float:
    return metric(base, "chat_ws_closed_total", reason="overflow")


def test_a_node_behind_the_log_stays_ready_unless_past_ready_max_lag() -> None:
    assert readiness(False, 0, 0) == (False, "not_ready")
    assert readiness(True, 0, 0) == (True, "ready")
    assert readiness(True, 75_000, 0) == (True, "lagging")  # a fleet must not go dark
    assert readiness(True, 10, 10) == (True, "lagging")
    assert readiness(True, 11, 10) == (False, "lagging")
    assert readiness(False, 11, 10) == (False, "not_ready")


async def test_readyz_reports_the_lag(procs: NodeProcs) -> None:
    node = procs.node("a", "--ready-max-lag", "1000")
    status, body = await asyncio.to_thread(http, "GET", node.url + "/readyz")
    assert status == 200 and body["status"] == "ready" and body["lag"] == 0, body


async def test_request_heads_beyond_64_kib_get_431(procs: NodeProcs) -> None:
    """96 MB of headers were once read whole and answered 200 (and the memory stayed)."""
    node = procs.node("a")
    for path in ("/healthz", "/ws"):
        sock = socket.create_connection(("127.0.0.1", node.port), timeout=15)
        try:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
            with contextlib.suppress(OSError):  # the node may stop reading before the end
                for i in range(20):
                    sock.sendall(f"X-Filler-{i}: {'y' * 8000}\r\n".encode())
                sock.sendall(b"\r\n")
            status, body = problem(await asyncio.to_thread(read_all, sock))
        finally:
            sock.close()
        assert status == "HTTP/1.1 431 Request Header Fields Too Large", status
        assert body["error"] == "headers_too_large"
    assert await asyncio.to_thread(refused, node.url, "headers_too_large") == 2


@pytest.mark.parametrize("signed_in", [True, False], ids=["with-token", "without-token"])
async def test_a_ping_flood_drops_the_socket(procs: NodeProcs, signed_in: bool) -> None:
    """uvicorn answers pings below the app: one socket pinging without end once took a
    node's whole CPU and, its pongs unread, 20 MiB a second. Past a burst of 20 and 2 a
    second, the socket is dropped; a client pinging now and then is not."""
    node = procs.node("a")
    headers = bearer() if signed_in else {}
    async with websockets.connect(ws_url(node.url), additional_headers=headers) as calm:
        for _ in range(5):
            await asyncio.wait_for(await calm.ping(), 10)
        async with websockets.connect(ws_url(node.url), additional_headers=headers) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                for _ in range(1000):
                    await ws.ping()
                await asyncio.wait_for(ws.recv(), 10)
        await asyncio.wait_for(await calm.ping(), 10)  # the other socket is still served
    assert await asyncio.to_thread(refused, node.url, "ws_control_frames") == 1


async def test_answers_nobody_reads_count_against_the_queue(procs: NodeProcs) -> None:
    """A socket sending `leave` frames and reading none of the answers once grew a node by
    175 MiB in 10 s: the answers now count against WS_QUEUE, and it gets 1013."""
    node = procs.node("a", "--ws-queue", "100")
    slow = RawClient(node.port)
    try:
        slow.send_text(json.dumps({"op": "auth", "token": ADMIN_TOKEN}))
        burst = RawClient.frame(json.dumps({"op": "leave", "channel": "c"})) * 1000
        with contextlib.suppress(OSError):
            for _ in range(20):
                slow.sock.sendall(burst)
        await until(lambda: closed_overflow(node.url) == 1, what="closed with 1013")
    finally:
        slow.file.close()
        slow.sock.close()
