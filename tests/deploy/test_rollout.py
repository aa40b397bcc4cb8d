"""A rolling update done the way the chart does it, with real processes: each chat node runs
the chart's command with the chart's environment (only NATS_URL, HOST, PORT and NODE_ID are
local), against a 3-server NATS cluster and an R3 stream as in the chart. Like the
Deployment's RollingUpdate (maxSurge 1, maxUnavailable 0), a new node must pass /readyz
before an old one gets SIGTERM. Under load, nothing acknowledged is lost, and a WebSocket
client that resumes on another node with ``after`` sees every message once, in order."""

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets

from chat_cluster.credentials import Credentials
from chat_cluster.local import Service
from chat_cluster.processes import free_port
from tests.deploy.chart import RELEASE, container, env_of, one, render
from tests.faults.checker import check
from tests.faults.harness import Cluster
from tests.faults.load import CHANNELS, Load
from tests.support import all_messages, wait_until

pytestmark = pytest.mark.chart


class ChartNode(Service):
    """A chat node started with the chart's command and environment."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path) -> None:
        port = free_port()
        super().__init__(name, [], port, workdir / f"{name}.log")
        self.command = command
        # Loopback only: tests never listen beyond this machine (the chart binds 0.0.0.0).
        self.env = {**env, "HOST": "127.0.0.1", "PORT": str(port), "NODE_ID": name}

    def start(self) -> None:
        # The console script of the environment running the tests, as the image's PATH has it.
        beside = Path(sys.executable).with_name(self.command[0])
        program = str(beside) if beside.exists() else shutil.which(self.command[0])
        assert program, f"{self.command[0]} is not installed (pip install -e .)"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [program, *self.command[1:]],
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class Resumer:
    """A WebSocket client on one channel that moves to another node when its node goes
    away (close 1001), resuming with ``after`` = the last seq it got."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.seqs: list[int] = []
        self.resumes = 0
        self.stop = False

    async def run(self, nodes: "list[ChartNode]") -> None:
        while not self.stop:
            live = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
            if not live:
                await asyncio.sleep(0.05)
                continue
            with contextlib.suppress(OSError, websockets.WebSocketException, TimeoutError):
                url = live[self.resumes % len(live)].url.replace("http", "ws") + "/ws"
                async with websockets.connect(url, open_timeout=3, close_timeout=1) as ws:
                    after = self.seqs[-1] if self.seqs else 0
                    await ws.send(
                        json.dumps({"op": "join", "channel": self.channel, "after": after})
                    )
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame["op"] == "message":
                            self.seqs.append(frame["seq"])
                        if self.stop:
                            return
            self.resumes += 1
            await asyncio.sleep(0.05)


async def test_rolling_update_as_the_chart_does_it(
    nats_bin: Path, tmp_path: Path, creds: Credentials
) -> None:
    chat = container(one(render(), "Deployment", f"{RELEASE}-chat"))
    env = env_of(chat)
    cluster = Cluster(nats_bin, tmp_path, creds, servers=3)
    nodes: list[ChartNode] = []
    resumer = Resumer(CHANNELS[0])
    reader: asyncio.Task[None] | None = None
    try:
        cluster.start_nats()
        env["NATS_URL"] = cluster.nats_urls
        assert env["STREAM_REPLICAS"] == "3"

        def start(name: str) -> ChartNode:
            node = ChartNode(name, chat["command"], env, tmp_path)
            node.start()
            nodes.append(node)
            wait_until(node.ready, timeout=60, what=f"{name} ready")
            return node

        for i in range(3):
            await asyncio.to_thread(start, f"{RELEASE}-chat-old-{i}")
        await asyncio.to_thread(cluster.start_archiver)

        def serving() -> list[str]:
            return [n.url for n in nodes if n.proc is not None and n.proc.poll() is None]

        # Bounded by count and time; stopped once the rollout is over.
        load = Load(
            serving,
            cluster.nats_urls,
            cluster.raw_creds(),
            per_worker=5000,
            interval=0.02,
            deadline=90,
        )
        load.start()
        reader = asyncio.create_task(resumer.run(nodes))

        def acked() -> int:
            return sum(a.seq is not None for a in load.attempts.values())

        await asyncio.to_thread(wait_until, lambda: acked() >= 40)
        roll_started = time.monotonic()
        for i, old in enumerate(list(nodes)):
            await asyncio.to_thread(start, f"{RELEASE}-chat-new-{i}")  # surge, then ready
            grace = float(env["GRACE_SECONDS"]) + 5
            await asyncio.to_thread(old.stop, grace)  # SIGTERM: drain, close with 1001
            nodes.remove(old)
        rolled_at = time.monotonic()
        during = sum(roll_started <= a.acked_at <= rolled_at for a in load.attempts.values())
        target = acked() + 40
        await asyncio.to_thread(wait_until, lambda: acked() >= target)
        await load.stop()
        assert during > 0  # the rollout really happened under load

        last = max(a.seq for a in load.attempts.values() if a.seq is not None)
        report = await asyncio.to_thread(
            check, "chart_rollout", load.attempts, nodes, cluster.archiver, last, rolled_at
        )
        print(report.summary())
        assert report.ok(), report.examples
        assert report.acknowledged > 0 and report.failed == 0, report.summary()
        assert report.convergence_s is not None, report.summary()

        # the resuming client: every message of its channel once, in order, no gap
        expected = [m["seq"] for m in all_messages(nodes[0].url, resumer.channel)]
        await asyncio.to_thread(
            wait_until,
            lambda: resumer.seqs[-1:] == expected[-1:],
            20,
            "the resuming client to catch up",
        )
        assert resumer.resumes >= 1  # it really had to move at least once
        assert resumer.seqs == expected
    finally:
        resumer.stop = True
        for node in nodes:
            node.stop(5)
        cluster.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
