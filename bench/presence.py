"""Figure 11: what presence costs (issue 15). One node holds every socket (one user each,
joined to one of the channels), a second node listens (it receives everything the first
publishes), and sockets leave and join again all the while. The same run with presence
off (PRESENCE_INTERVAL=0) is the ceiling the CPU is compared with."""

import asyncio
import json
import random
import time
import urllib.request
from collections import deque
from pathlib import Path

import websockets
from prometheus_client.parser import text_string_to_metric_families

from bench.common import HEADERS, BenchNats, Figure, NodeProc, process_cpu, start_nats, user_token

INTERVAL = 5
"""PRESENCE_INTERVAL: the production default."""
ENV = {"MAX_CONNECTIONS": "0", "MAX_CONNECTIONS_PER_ADDRESS": "0", "WS_JOIN_RATE": "0"}


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers=HEADERS)
    with urllib.request.urlopen(request, timeout=30) as answer:
        body: bytes = answer.read()
        return body


def _presence_out(node: NodeProc) -> float:
    text = _get(node.url + "/metrics").decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "chat_presence_messages_total" and sample.labels == {
                "direction": "out"
            }:
                return float(sample.value)
    return 0.0


def _online(node: NodeProc, channels: int) -> int:
    total = 0
    for i in range(channels):
        page = json.loads(_get(f"{node.url}/presence?channel=p{i}&limit=1"))
        total += page["online"]
    return total


async def _connect(node: NodeProc, users: int, channels: int) -> list[websockets.ClientConnection]:
    url = node.url.replace("http", "ws") + "/ws"

    async def one(i: int) -> websockets.ClientConnection:
        headers = {"authorization": f"Bearer {user_token(f'u{i}')}"}
        ws = await websockets.connect(url, open_timeout=120, additional_headers=headers)
        await ws.send(json.dumps({"op": "join", "channel": f"p{i % channels}", "after": 0}))
        return ws

    sockets: list[websockets.ClientConnection] = []
    for start in range(0, users, 200):
        sockets += await asyncio.gather(*(one(i) for i in range(start, min(start + 200, users))))
    return sockets


async def _drain(ws: websockets.ClientConnection) -> None:
    async for _ in ws:
        pass


async def _measure(
    server: BenchNats, users: int, channels: int, seconds: float, churn: float, on: bool
) -> tuple[float, float, float]:
    """(node CPU in cores, listening node's CPU in cores, presence messages/s out)."""
    env = {**ENV, "PRESENCE_INTERVAL": str(INTERVAL if on else 0)}
    node, peer = NodeProc(server, env=env), NodeProc(server, env=env)
    sockets: list[websockets.ClientConnection] = []
    readers: list[asyncio.Task[None]] = []
    try:
        await asyncio.to_thread(node.wait_ready)
        await asyncio.to_thread(peer.wait_ready)
        sockets = await _connect(node, users, channels)
        readers = [asyncio.create_task(_drain(ws)) for ws in sockets]
        if on:  # the listening node holds everyone before the window opens
            deadline = time.monotonic() + 120
            while await asyncio.to_thread(_online, peer, channels) < users:
                if time.monotonic() > deadline:
                    raise RuntimeError("the listening node never learned every user")
                await asyncio.sleep(0.5)
        await asyncio.sleep(INTERVAL)  # settled: the joins' own work is over
        rng = random.Random(7)
        cpu0, peer0 = process_cpu(node.proc.pid), process_cpu(peer.proc.pid)
        out0, t0 = await asyncio.to_thread(_presence_out, node), time.perf_counter()
        away: deque[tuple[float, int]] = deque()  # left; joins again half a second later
        for k in range(int(seconds * churn)):
            delay = t0 + k / churn - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            i = rng.randrange(users)
            if all(i != j for _, j in away):
                await sockets[i].send(json.dumps({"op": "leave", "channel": f"p{i % channels}"}))
                away.append((now, i))
            while away and away[0][0] <= now - 0.5:
                _, back = away.popleft()
                join = {"op": "join", "channel": f"p{back % channels}", "after": 0}
                await sockets[back].send(json.dumps(join))
        await asyncio.sleep(max(0.0, t0 + seconds - time.perf_counter()))
        elapsed = time.perf_counter() - t0
        cpu = (process_cpu(node.proc.pid) - cpu0) / elapsed
        peer_cpu = (process_cpu(peer.proc.pid) - peer0) / elapsed
        out = (await asyncio.to_thread(_presence_out, node) - out0) / elapsed
        return cpu, peer_cpu, out
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for ws in sockets:
            await ws.close()
        node.stop()
        peer.stop()


async def presence_cost(work: Path, users: int, channels: int, seconds: float) -> list[Figure]:
    churn = users / 100  # 1% of the users leave every second, and come back 0.5 s later
    # The smaller run has the same churn: only the number of sockets differs.
    server = await start_nats(work)
    try:
        small = await _measure(server, users // 10, channels, seconds, churn, True)
        on = await _measure(server, users, channels, seconds, churn, True)
        off = await _measure(server, users, channels, seconds, churn, False)
    finally:
        server.stop()
    cost, peer_cost = on[0] - off[0], on[1] - off[1]
    size = (
        f"{users:,} users in {channels} channels on one node, {churn:g} leaves/s and as many joins"
    )
    return [
        Figure(
            "11",
            f"presence messages/s one node publishes, {size}",
            on[2],
            "msg/s",
            ceiling=small[2],
            ratio=on[2] / small[2] if small[2] else None,
            target="independent of sockets",
            passed=small[2] > 0 and on[2] / small[2] <= 1.5,
            note=f"ceiling: the same with {users // 10:,} users; heartbeat every {INTERVAL}s",
        ),
        Figure(
            "11",
            f"node CPU with presence, {size}",
            on[0] * 100,
            "% of a core",
            ceiling=off[0] * 100,
            ratio=on[0] / off[0] if off[0] else None,
            target="<= +5% of a core",
            passed=cost <= 0.05,
            note=f"ceiling: presence off; presence adds {cost * 100:.1f}%",
        ),
        Figure(
            "11",
            "CPU of a second node that only listens to it",
            on[1] * 100,
            "% of a core",
            ceiling=off[1] * 100,
            ratio=on[1] / off[1] if off[1] else None,
            target="<= +5% of a core",
            passed=peer_cost <= 0.05,
            note=f"ceiling: presence off; presence adds {peer_cost * 100:.1f}% (the ratio "
            "of two small numbers)",
        ),
    ]
