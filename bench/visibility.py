"""How long a raw core-NATS publish takes to show on every node and on the archiver.

Starts ``chat-cluster up`` on a free port range, joins a WebSocket on every
node, then publishes N plain-text messages with a bare nats-py client (what
``nats pub`` does) and records, per message, when the last node delivered it
and when the archiver first served it (polled every 5 ms). Prints p50/p99/max.
This is a measurement, not a test: nothing here asserts a time.

    .nox/tests/bin/python bench/visibility.py --messages 200
"""

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nats
import websockets

from chat_cluster.settings import minted


def wait_up(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ctrl-C" in line:
            return
    raise SystemExit("chat-cluster up did not start")


def archived_texts(url: str, headers: dict[str, str]) -> list[str]:
    request = urllib.request.Request(f"{url}?after=0&limit=1000", headers=headers)
    with urllib.request.urlopen(request) as resp:
        return [m["text"] for m in json.loads(resp.read())["messages"]]


def start_up(base: int, data: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chat_cluster", "up", "--base-port", str(base), "--data-dir", data],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


async def main(count: int) -> None:
    base = random.randrange(30000, 60000, 1000)
    data = tempfile.mkdtemp(prefix="bench-visibility-")
    up = start_up(base, data)
    try:
        wait_up(up)
        token = minted(Path(data), "bench", admin=True)  # with the key `up` made there
        headers = {"authorization": f"Bearer {token}"}
        nodes = [f"ws://127.0.0.1:{base + i}/ws" for i in (1, 2, 3)]
        archiver = f"http://127.0.0.1:{base + 100}/messages/bench"
        arrivals: dict[int, list[float]] = {}
        sockets = [await websockets.connect(url, additional_headers=headers) for url in nodes]
        for ws in sockets:
            await ws.send(json.dumps({"op": "join", "channel": "bench", "after": 0}))
            assert json.loads(await ws.recv())["op"] == "joined"

        async def reader(ws: websockets.ClientConnection) -> None:
            async for raw in ws:
                frame = json.loads(raw)
                if frame["op"] == "message":
                    arrivals.setdefault(int(frame["text"]), []).append(time.perf_counter())

        readers = [asyncio.create_task(reader(ws)) for ws in sockets]
        # `nats pub` needs the publisher role's key, which `up` made in its data dir.
        nc = await nats.connect(
            f"nats://127.0.0.1:{base + 200}", nkeys_seed=f"{data}/creds/publisher.nk"
        )
        node_lat, arch_lat = [], []
        for i in range(count):
            t0 = time.perf_counter()
            await nc.publish("chat.bench", str(i).encode())
            await nc.flush()
            seen_archiver = None
            while seen_archiver is None or len(arrivals.get(i, [])) < 3:
                if seen_archiver is None:
                    texts = await asyncio.to_thread(archived_texts, archiver, headers)
                    if str(i) in texts:
                        seen_archiver = time.perf_counter()
                await asyncio.sleep(0.005)
            node_lat.append(max(arrivals[i]) - t0)
            arch_lat.append(seen_archiver - t0)
        for name, values in (("all 3 nodes", node_lat), ("archiver", arch_lat)):
            values.sort()
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            print(
                f"{name:>12}: p50 {statistics.median(values) * 1000:.1f} ms, "
                f"p99 {p99 * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms (n={len(values)})"
            )
        await nc.close()
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(60)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200)
    asyncio.run(main(parser.parse_args().messages))
