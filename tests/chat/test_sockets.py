"""Chat nodes as real processes over real sockets: resume across nodes, overflow, SIGTERM."""

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import time
from typing import Any

import websockets

from chatlog import ChatLog
from tests.support import (
    ADMIN_TOKEN,
    NodeProcs,
    all_messages,
    bearer,
    http,
    metric,
    said,
    token,
    until,
    wait_until,
)


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


async def recv(ws: Any, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        return json.loads(await ws.recv())


async def join(ws: Any, channel: str, after: int | None = None) -> Any:
    frame: dict[str, object] = {"op": "join", "channel": channel}
    if after is not None:
        frame["after"] = after
    await ws.send(json.dumps(frame))
    joined = await recv(ws)
    assert joined["op"] == "joined", joined
    return joined


async def test_post_on_one_node_is_read_on_another(procs: NodeProcs) -> None:
    a, b = procs.node("a"), procs.node("b")
    status, sent = await asyncio.to_thread(
        http, "POST", a.url + "/messages", {"channel": "x", "text": "across"}
    )
    assert status == 201
    status, page = await asyncio.to_thread(
        http, "GET", f"{b.url}/messages?channel=x&min_seq={sent['seq']}"
    )
    assert status == 200 and [m["text"] for m in page["messages"]] == ["across"]


async def test_client_resumes_on_another_node_without_gap_or_duplicate(procs: NodeProcs) -> None:
    a, b = procs.node("a"), procs.node("b")
    seen: list[int] = []
    async with websockets.connect(ws_url(a.url), additional_headers=bearer()) as ws:
        await join(ws, "room", after=0)
        for i in range(5):
            await ws.send(json.dumps({"op": "send", "channel": "room", "text": f"{i}"}))
        while len(seen) < 5:
            frame = await recv(ws)
            if frame["op"] == "message":
                seen.append(frame["seq"])
    # while the client is away, more is written through the other node
    missed = []
    for i in range(4):
        status, sent = await asyncio.to_thread(
            http, "POST", b.url + "/messages", {"channel": "room", "text": f"m{i}"}
        )
        assert status == 201
        missed.append(sent["seq"])
    async with websockets.connect(ws_url(b.url), additional_headers=bearer()) as ws:
        await join(ws, "room", after=seen[-1])
        got = [(await recv(ws))["seq"] for _ in missed]
    assert got == missed
    assert seen == sorted(seen) and not set(seen) & set(got)


class RawClient:
    """A WebSocket client on a bare socket, so the test decides when (if ever) it reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert rest == b""  # the node sends nothing before our join
        self.file = self.sock.makefile("rb")

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.frame(text))

    @staticmethod
    def frame(text: str) -> bytes:
        """A masked client text frame (what every client must send)."""
        data, mask = text.encode(), os.urandom(4)
        assert len(data) < 65536
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        if len(data) < 126:
            header = bytes([0x81, 0x80 | len(data)])
        else:
            header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(data))
        return header + mask + masked

    def _read(self, n: int) -> bytes:
        out = self.file.read(n)
        if len(out) < n:
            raise EOFError("connection closed without a close frame")
        return bytes(out)

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame: (its first byte, FIN and opcode; its payload)."""
        b0, b1 = self._read(2)
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        return b0, self._read(length)

    def read_text(self) -> str:
        """The next text frame's payload (a close frame is an error here)."""
        b0, payload = self.read_frame()
        assert b0 == 0x81, (b0, payload[:80])
        return payload.decode()

    def read_until_close(self) -> tuple[int, int]:
        """Read every frame; return (text frames seen, close code)."""
        frames = 0
        while True:
            b0, payload = self.read_frame()
            if b0 & 0x0F == 0x8:
                return frames, struct.unpack("!H", payload[:2])[0]
            frames += 1


async def test_slow_client_is_closed_with_1013_and_others_keep_going(procs: NodeProcs) -> None:
    node = procs.node("a", "--ws-queue", "512")
    slow = RawClient(node.port)
    slow.send_text(json.dumps({"op": "auth", "token": ADMIN_TOKEN}))  # the first frame
    slow.send_text(json.dumps({"op": "join", "channel": "flood", "after": 0}))
    fast = await websockets.connect(ws_url(node.url), additional_headers=bearer())
    sender = await websockets.connect(ws_url(node.url), additional_headers=bearer())
    total = 3000  # 24 MB: more than the kernel buffers between the node and `slow` hold

    async def read_all() -> int:
        got = 0
        while got < total:
            got += (await recv(fast, 30))["op"] == "message"
        return got

    try:
        await join(fast, "flood", after=0)
        reader = asyncio.create_task(read_all())
        text = "x" * 8000
        for i in range(total):
            await sender.send(
                json.dumps({"op": "send", "channel": "flood", "text": text, "id": f"f{i}"})
            )
        acks = 0
        while acks < total:
            acks += (await recv(sender, 30))["op"] == "ack"
        assert await reader == total  # the client that reads got everything
        frames, code = await asyncio.to_thread(slow.read_until_close)
        assert code == 1013 and frames < total + 1
    finally:
        slow.file.close()
        slow.sock.close()
        for ws in (fast, sender):
            await ws.close()
    status, _ = await asyncio.to_thread(http, "GET", node.url + "/readyz")
    assert status == 200
    _, metrics = await asyncio.to_thread(http, "GET", node.url + "/metrics")
    assert 'chat_ws_closed_total{reason="overflow"} 1' in metrics.decode().splitlines()


async def test_sigterm_closes_websockets_with_1001_and_exits(procs: NodeProcs) -> None:
    node = procs.node("a", "--grace", "5")
    async with websockets.connect(ws_url(node.url), additional_headers=bearer()) as ws:
        await join(ws, "room")
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1001
    code = await asyncio.to_thread(node.proc.wait, 10)
    assert code in (0, -signal.SIGTERM)
    wait_until(lambda: node.proc is not None and node.proc.poll() is not None)


async def test_waiting_reads_are_capped_and_answered_busy(procs: NodeProcs) -> None:
    """``min_seq`` reads hold a slot while they wait; past MIN_SEQ_WAITERS the next is
    answered 503 busy at once, and a read that needs no wait is never refused."""
    node = procs.node("a", "--min-seq-waiters", "2", "--min-seq-wait", "3")
    far = node.url + f"/messages?channel=room&min_seq={10**9}"
    waiting = [asyncio.create_task(asyncio.to_thread(http, "GET", far)) for _ in range(2)]
    await until(lambda: replica_waiting(node.url) == 2, what="two reads waiting")
    status, body = await asyncio.to_thread(http, "GET", far)
    assert status == 503 and body["error"] == "busy", body
    assert (await asyncio.to_thread(http, "GET", node.url + "/messages?channel=room"))[0] == 200
    for task in waiting:
        status, body = await task
        assert status == 503 and body["error"] == "not_caught_up"
    status, _ = await asyncio.to_thread(http, "GET", node.url + "/messages?channel=room&min_seq=0")
    assert status == 200


def replica_waiting(base: str) -> float:
    return metric(base, "chat_reads_waiting")


async def test_a_flooding_sender_is_rate_limited_and_keeps_its_socket(procs: NodeProcs) -> None:
    """One user over SEND_RATE: 429 with Retry-After over REST, a rate_limited frame over
    WebSocket (the socket stays open, no 1008), nothing beyond the rate is stored, and
    another user on the same node is not affected."""
    node = procs.node("a", "--send-rate", "5", "--send-burst", "10")
    flooder = bearer(token("flooder", send=("*",), read=("*",)))
    url = node.url + "/messages"
    statuses = []
    for i in range(20):
        status, body = await asyncio.to_thread(
            http, "POST", url, {"channel": "room", "text": f"r{i}"}, headers=flooder, token=None
        )
        statuses.append(status)
    assert statuses[:10] == [201] * 10 and 429 in statuses[10:], statuses
    assert body["error"] == "rate_limited" and "retry in" in body["detail"]
    async with websockets.connect(ws_url(node.url), additional_headers=flooder) as ws:
        started = asyncio.get_running_loop().time()
        for i in range(30):
            await ws.send(
                json.dumps({"op": "send", "channel": "room", "text": f"w{i}", "id": f"w{i}"})
            )
        frames = [await recv(ws) for _ in range(30)]
        elapsed = asyncio.get_running_loop().time() - started
        limited = [f for f in frames if f["op"] == "error"]
        assert limited and all(f["code"] == "rate_limited" for f in limited), frames
        # At most what the bucket refilled: the node reads the next frame only once the
        # refusal's Retry-After has passed, so the flood is slowed, not just refused.
        assert len(frames) - len(limited) <= 1 + 5 * elapsed, (frames, elapsed)
        await ws.send(json.dumps({"op": "join", "channel": "room", "after": 0}))
        assert (await recv(ws))["op"] == "joined"  # still open, still served
    other = bearer(token("calm", send=("*",)))
    status, _ = await asyncio.to_thread(
        http, "POST", url, {"channel": "room", "text": "calm"}, headers=other, token=None
    )
    assert status == 201
    refused = await asyncio.to_thread(
        metric, node.url, "chat_limits_refused_total", reason="send_rate"
    )
    assert refused == statuses.count(429) + len(limited)
    stored = await asyncio.to_thread(all_messages, node.url, "room")
    assert len(stored) == sum(s == 201 for s in statuses) + len(frames) - len(limited) + 1


async def test_frames_written_once_keep_order_across_catch_up_and_live(
    chatlog: ChatLog, procs: NodeProcs
) -> None:
    """Sockets join while the log grows: each gets every message once, in seq order,
    across its catch-up (pages written in one call) and live delivery (the message's
    frame, built once, written by the push itself), as the writes' metric shows."""
    node = procs.node("a")
    total = 1200
    for i in range(total // 2):
        await chatlog.publish("room", said(f"m{i}"), f"id{i}")
    clients = []

    async def read(ws: Any) -> list[int]:
        seqs: list[int] = []
        while len(seqs) < total:
            frame = await recv(ws, 30)
            if frame["op"] == "message":
                seqs.append(frame["seq"])
        return seqs

    try:
        for i in range(total // 2, total):
            await chatlog.publish("room", said(f"m{i}"), f"id{i}")
            if i % 30 == 0:  # twenty sockets, each joining at another point of the flow
                ws = await websockets.connect(ws_url(node.url), additional_headers=bearer())
                await join(ws, "room", after=0)
                clients.append((ws, asyncio.create_task(read(ws))))
        for _, reader in clients:
            assert await reader == list(range(1, total + 1))
    finally:
        for ws, _ in clients:
            await ws.close()
    writes = {path: metric(node.url, "chat_ws_writes_total", path=path)
              for path in ("direct", "batched")}  # fmt: skip
    assert writes["direct"] > 0 and writes["batched"] > 0, writes


async def test_a_socket_that_stops_reading_and_starts_again_gets_every_frame_in_order(
    chatlog: ChatLog, procs: NodeProcs
) -> None:
    """While a client does not read, its transport pauses and frames queue; when it reads
    again, the queue drains while new messages keep coming. A new message must not be
    written at once ahead of the queued ones: nothing out of order, nothing twice."""
    node = procs.node("a", "--ws-queue", "4096")
    slow = RawClient(node.port)
    slow.send_text(json.dumps({"op": "auth", "token": ADMIN_TOKEN}))
    slow.send_text(json.dumps({"op": "join", "channel": "big", "after": 0}))
    total, text = 2000, "x" * 8000  # 16 MB: more than the kernel buffers hold

    def read_all() -> list[int]:
        # A reader slower than the flow (load shaping, not synchronisation): the
        # transport pauses and resumes many times while frames wait in the queue.
        seqs: list[int] = []
        while len(seqs) < total:
            frame = json.loads(slow.read_text())
            if frame["op"] == "message":
                seqs.append(frame["seq"])
                if len(seqs) % 20 == 0:
                    time.sleep(0.01)
        return seqs

    try:
        reader = None
        for i in range(total):
            await chatlog.publish("big", said(text), f"b{i}")
            if i == total // 2:  # paused and queued by now: start reading, keep publishing
                reader = asyncio.create_task(asyncio.to_thread(read_all))
        assert reader is not None
        assert await reader == list(range(1, total + 1))
    finally:
        slow.file.close()
        slow.sock.close()
    assert metric(node.url, "chat_ws_closed_total", reason="overflow") == 0
