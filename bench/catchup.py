"""How fast a new chat node replays the log, against a raw consumer of the same stream.

Fills a fresh stream with N messages (100 channels, 200-byte texts), then times
(a) our own Tail from seq 1 with nothing applied (the ceiling: what the log
delivers to Python), and (b) a ``chat-cluster node`` process from start to
``/readyz`` 200. Prints both rates and their ratio. A measurement, not a test.

    .nox/tests/bin/python bench/catchup.py --messages 100000
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from auth import keys
from bench.common import KEYS, BenchNats, start_nats
from chat_cluster.natsserver import checked_binary
from chat_cluster.processes import free_port


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def time_node_ready(server: BenchNats) -> float:
    """Seconds from starting a node process to its first 200 on /readyz."""
    port = free_port()
    t0 = time.perf_counter()
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chat_cluster",
            "node",
            "--nats-url",
            server.url,
            "--port",
            str(port),
        ],
        stderr=subprocess.DEVNULL,
        env={**os.environ, **server.env(), "AUTH": "jwt", "JWKS_FILE": str(KEYS / keys.JWKS)},
    )
    try:
        while not ready(f"http://127.0.0.1:{port}/readyz"):
            time.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        node.terminate()
        node.wait(30)


async def main(count: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-catchup-"))
    _, version = checked_binary()
    server = await start_nats(work)
    try:
        log = await server.log()
        text = b'{"text": "' + b"x" * 200 + b'"}'
        for start in range(0, count, 1000):
            await asyncio.gather(
                *(
                    log.publish(f"c{i % 100}", text, f"m{i}")
                    for i in range(start, min(count, start + 1000))
                )
            )
        t0 = time.perf_counter()
        got = 0
        async with log.tail(1, 1.0) as tail:
            while got < count:
                got += len(await tail.batch(1.0))
        raw = time.perf_counter() - t0
        await log.close()

        node_s = await asyncio.to_thread(time_node_ready, server)
        print(f"nats-server {version}, {count} messages")
        print(f"  raw tail (ceiling): {raw:.2f} s, {count / raw:,.0f} msg/s")
        print(
            f"  node to ready:      {node_s:.2f} s, {count / node_s:,.0f} msg/s"
            f" (ratio {raw / node_s:.2f}; includes process start)"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().messages))
