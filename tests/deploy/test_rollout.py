"""A rolling update done the way the chart does it, with real processes: each chat node runs
the chart's command with the chart's environment (only NATS_URL, HOST, PORT and NODE_ID are
local), against a 3-server NATS cluster and an R3 stream as in the chart. The servers admit
exactly the chart's users, with the passwords of the chart's Secret; the streams are made
by the chart's ensure-stream Job (its command and env, so as admin) and the archiver runs
as the chart runs it. Like the Deployment's RollingUpdate (maxSurge 1, maxUnavailable 0),
a new node must pass /readyz before an old one gets SIGTERM. Under load (REST, WebSocket,
and raw publishes with the chart's publisher password), nothing acknowledged is lost, and
a WebSocket client that resumes on another node with ``after`` sees every message once,
in order."""

import asyncio
import contextlib
import dataclasses
import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import websockets

from chat_cluster.credentials import Credentials
from chat_cluster.local import Service
from chat_cluster.natsserver import Auth, NatsServer
from chatlog.roles import ARCHIVER, NODE, PUBLISHER, ROLES, inbox_prefix
from tests.deploy.chart import (
    JWKS_SECRET,
    RELEASE,
    ChartNode,
    ChartProcess,
    container,
    env_of,
    given,
    nats_pod,
    one,
    render,
    secrets_of,
)
from tests.faults.checker import check
from tests.faults.harness import Cluster, monitor
from tests.faults.load import CHANNELS, Attempt, Load
from tests.support import JWKS_FILE, STORE, all_messages, bearer, wait_until

pytestmark = pytest.mark.chart


def authorized(servers: list[NatsServer]) -> dict[str, set[str]]:
    """Connection name -> the users it authenticated as, from every server's /connz."""
    found: dict[str, set[str]] = {}
    for server in servers:
        for conn in monitor(server, "/connz?auth=true&limit=1024").get("connections") or []:
            found.setdefault(conn.get("name") or "", set()).add(conn.get("authorized_user", ""))
    return found


async def publish_raw(
    load: Load, urls: str, password: str, count: int, stop: asyncio.Event
) -> None:
    """`nats pub chat.<channel> ...` as the chart's publisher user would: core NATS, no
    ack; every publish is recorded as a raw attempt for the checker."""
    nc = await nats.connect(
        urls.split(","),
        user=PUBLISHER,
        password=password,
        inbox_prefix=inbox_prefix(PUBLISHER),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=2,
    )
    try:
        for k in itertools.count():
            if k >= count or stop.is_set():
                return
            attempt = Attempt(f"raw-chart-{k}", random.choice(CHANNELS), "raw", tries=1)
            load.attempts[attempt.id] = attempt
            payload = {"text": f"text of {attempt.id}", "id": attempt.id}
            try:
                await nc.publish(f"chat.{attempt.channel}", json.dumps(payload).encode())
            except nats.errors.Error as exc:
                attempt.errors.append(repr(exc)[:80])
            await asyncio.sleep(0.05)
    finally:
        with contextlib.suppress(OSError, nats.errors.Error):
            await nc.close()


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
                async with websockets.connect(
                    url, open_timeout=3, close_timeout=1, additional_headers=bearer()
                ) as ws:
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
    manifests = render()
    secrets = secrets_of(manifests, given("default"))
    chat_pod = one(manifests, "Deployment", f"{RELEASE}-chat")
    chat = container(chat_pod)
    env = with_jwks(chat_pod, env_of(chat, secrets))
    archiver_pod = one(manifests, "Deployment", f"{RELEASE}-archiver")
    archiver_box = container(archiver_pod)
    job_box = container(one(manifests, "Job", f"{RELEASE}-ensure-stream-1"))
    job_env = env_of(job_box, secrets)
    passwords = secrets[_credentials_secret(chat)]

    # The chart's users as its servers admit them (auth.conf read with the pod's env):
    # the test cluster admits exactly those, and no one else. Its servers are smaller
    # than the chart's, so the account gets their storage by the chart's rule.
    pod = nats_pod(manifests, secrets, tmp_path / "chart-nats")
    users = pod.users()
    assert sorted(u.name or "" for u in users) == sorted(ROLES)
    assert all(u.password == passwords[u.role] for u in users)
    replicas = int(job_env["STREAM_REPLICAS"])
    assert replicas == 3
    auth = Auth(tuple(users), STORE * replicas, passwords["route"])
    # The harness's nkeys (creds) stay unused: its servers get the chart's users instead.
    cluster = Cluster(nats_bin, tmp_path, creds, servers=3)
    for server in cluster.servers:
        server.config = dataclasses.replace(server.config, auth=auth)

    nodes: list[ChartNode] = []
    archiver: ChartProcess | None = None
    resumer = Resumer(CHANNELS[0])
    reader: asyncio.Task[None] | None = None
    raw: asyncio.Task[None] | None = None
    try:
        for server in cluster.servers:
            server.start()
        for server in cluster.servers:
            await asyncio.to_thread(server.wait_ready, 30)
        local = {"NATS_URL": cluster.nats_urls}

        # The chart's post-install Job, as admin: creates both streams, then exits 0.
        job = ChartProcess("ensure-stream", job_box["command"], {**job_env, **local}, tmp_path)
        job.start()
        assert job.proc is not None
        try:
            code = await asyncio.to_thread(job.proc.wait, 120)
        finally:
            job.stop(1)
        assert code == 0, job.log_text()

        env.update(local)
        env["SEND_RATE"] = "0"  # the load is one token: its sends must not be throttled
        assert env["NATS_USER"] == NODE and env["NATS_PASSWORD"] == passwords[NODE]

        def start(name: str) -> ChartNode:
            node = ChartNode(name, chat["command"], env, tmp_path)
            node.start()
            nodes.append(node)
            wait_until(node.ready, timeout=60, what=f"{name} ready")
            return node

        for i in range(3):
            await asyncio.to_thread(start, f"{RELEASE}-chat-old-{i}")
        archiver = ChartProcess(
            "archiver",
            archiver_box["command"],
            {**with_jwks(archiver_pod, env_of(archiver_box, secrets)), **local},
            tmp_path,
        )
        archiver.start()
        await asyncio.to_thread(wait_until, archiver.ready, 60, "archiver ready")

        # Each service is who the chart says it is, to NATS.
        seen = await asyncio.to_thread(authorized, cluster.servers)
        for node in nodes:
            assert seen.get(f"chat-node {node.name}") == {NODE}, seen
        assert seen.get("archiver") == {ARCHIVER}, seen

        def serving() -> list[str]:
            return [n.url for n in nodes if n.proc is not None and n.proc.poll() is None]

        # Bounded by count and time; stopped once the rollout is over. The raw sender is
        # ours (the chart's publisher password), not the harness's (an nkey).
        load = Load(serving, cluster.nats_urls, "", per_worker=5000, interval=0.02, deadline=90)
        load.start(raw=0)
        stop_raw = asyncio.Event()
        raw = asyncio.create_task(
            publish_raw(load, cluster.nats_urls, passwords[PUBLISHER], 400, stop_raw)
        )
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
        stop_raw.set()
        await raw
        assert during > 0  # the rollout really happened under load

        last = max(a.seq for a in load.attempts.values() if a.seq is not None)
        replicas_now: list[Service] = [*nodes]
        report = await asyncio.to_thread(
            check, "chart_rollout", load.attempts, replicas_now, archiver, last, rolled_at
        )
        print(report.summary())
        assert report.ok(), report.examples
        assert report.acknowledged > 0 and report.failed == 0, report.summary()
        assert report.convergence_s is not None, report.summary()
        # the publisher's raw messages reached the log (and so every replica)
        held = {m["id"] for channel in CHANNELS for m in all_messages(nodes[0].url, channel)}
        assert report.raw > 0 and any(a.startswith("raw-chart-") for a in held)

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
        if archiver is not None:
            archiver.stop(5)
        cluster.close()
        for task in (reader, raw):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def with_jwks(pod: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """The pod's JWKS_FILE is its mount of the JWKS Secret: here, the tests' JWKS (what
    the Secret would hold), after checking the chart wires that Secret to that path."""
    spec = pod["spec"]["template"]["spec"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "jwks")
    volume = next(v for v in spec["volumes"] if v["name"] == "jwks")
    assert env["AUTH"] == "jwt" and volume["secret"]["secretName"] == JWKS_SECRET
    assert env["JWKS_FILE"] == mount["mountPath"] + "/jwks.json" and mount["readOnly"]
    return {**env, "JWKS_FILE": str(JWKS_FILE)}


def _credentials_secret(chat: dict[str, Any]) -> str:
    ref = next(e for e in chat["env"] if e["name"] == "NATS_PASSWORD")
    name: str = ref["valueFrom"]["secretKeyRef"]["name"]
    return name
