"""``chat-cluster node --workers N``: N processes on one port, each a whole replica, that
the outside sees as one node (one /readyz, one /metrics), and that live and die together."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import websockets

from chat.app import create_app
from chat_cluster.local import Service
from chat_cluster.natsserver import NatsServer
from chat_cluster.processes import port_free
from servicekit.workers import Worker
from tests.support import (
    ADMIN_TOKEN,
    NodeProcs,
    http,
    node_settings,
    samples,
    until,
    wait_until,
)


def workers_of(node: Service) -> list[int]:
    assert node.proc is not None
    raw = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text()
    return [int(pid) for pid in raw.split()]


def own_answer(node: Service, timeout: float = 5) -> dict[str, object] | None:
    """/readyz?worker=self on a new connection: whichever worker the kernel picked."""
    try:
        return http("GET", node.url + "/readyz?worker=self", timeout=timeout)[1]  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError):
        return None


def test_workers_share_one_port_and_answer_as_one_node(procs: NodeProcs) -> None:
    node = procs.node("wk", "--workers", "2")
    assert len(workers_of(node)) == 2
    seen: set[str] = set()

    def both_answered() -> bool:
        answer = own_answer(node)
        if answer is not None:
            seen.add(str(answer["node_id"]))
        return seen == {"wk/0", "wk/1"}

    # The kernel spreads connections by their source port: both answer soon.
    wait_until(both_answered, timeout=30, what="connections reach both workers")

    status, ack = http("POST", node.url + "/messages", {"channel": "w", "text": "hello"})
    assert status == 201, ack
    applied: dict[str, int] = {}

    def both_applied() -> bool:
        answer = own_answer(node)
        if answer is not None:
            applied[str(answer["node_id"])] = int(answer["applied"])  # type: ignore[call-overload]
        return len(applied) == 2 and min(applied.values()) >= ack["seq"]

    wait_until(both_applied, timeout=30, what="each worker's replica applies the send")

    # One /metrics for the node: each family once, with every worker's samples in it.
    status, text = http("GET", node.url + "/metrics")
    assert status == 200
    page = samples(text.decode())
    applied = "chat_replica_applied_seq"
    assert {dict(labels)["worker"] for (name, labels) in page if name == applied} == {"0", "1"}


async def test_sockets_on_either_worker_get_every_message_once(procs: NodeProcs) -> None:
    node = procs.node("wk", "--workers", "2")
    url = node.url.replace("http", "ws") + "/ws"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    sockets = [
        await websockets.connect(url, additional_headers=headers, open_timeout=10)
        for _ in range(12)
    ]
    try:
        for ws in sockets:
            await ws.send(json.dumps({"op": "join", "channel": "both", "after": 0}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["op"] == "joined"
        for k in range(5):
            status, _ = await asyncio.to_thread(
                http, "POST", node.url + "/messages", {"channel": "both", "text": f"m{k}"}
            )
            assert status == 201
        for ws in sockets:
            texts = []
            while len(texts) < 5:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["op"] == "message":
                    texts.append(frame["text"])
            assert texts == [f"m{k}" for k in range(5)]
        status, text = await asyncio.to_thread(http, "GET", node.url + "/metrics")
        page = samples(text.decode())
        per_worker = {
            dict(labels)["worker"]: value
            for (name, labels), value in page.items()
            if name == "chat_ws_connections"
        }
        assert sum(per_worker.values()) == 12 and min(per_worker.values()) > 0, per_worker
    finally:
        for ws in sockets:
            await ws.close()


async def test_ready_only_when_every_worker_is(procs: NodeProcs) -> None:
    node = procs.node("wk", "--workers", "2")
    stopped, _ = workers_of(node)
    os.kill(stopped, signal.SIGSTOP)
    try:
        answers: list[tuple[int, object]] = []

        def a_running_worker_says_not_ready() -> bool:
            try:
                status, body = http("GET", node.url + "/readyz", timeout=5)
            except (urllib.error.URLError, OSError):
                return False  # this connection went to the stopped worker
            answers.append((status, body))
            return status == 503

        await asyncio.to_thread(
            wait_until, a_running_worker_says_not_ready, 60, "503 from the running worker"
        )
        assert answers[-1][1]["status"] == "workers_not_ready"  # type: ignore[index]
    finally:
        os.kill(stopped, signal.SIGCONT)
    await until(node.ready, timeout=30, what="ready again")


def test_a_dead_worker_stops_the_node(procs: NodeProcs) -> None:
    node = procs.node("wk", "--workers", "2")
    first, second = workers_of(node)
    os.kill(first, signal.SIGKILL)
    assert node.proc is not None
    assert node.proc.wait(30) == 1  # whole or not running: its orchestrator restarts it
    wait_until(lambda: not Path(f"/proc/{second}").exists(), 10, "the other worker gone")
    assert port_free(node.port)


def test_kill_9_of_the_node_kills_its_workers(procs: NodeProcs) -> None:
    node = procs.node("wk", "--workers", "2")
    pids = workers_of(node)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(10)
    for pid in pids:
        wait_until(lambda pid=pid: not _alive(pid), 10, f"worker {pid} gone")  # type: ignore[misc]


def test_a_second_node_on_the_same_port_is_refused(procs: NodeProcs) -> None:
    node = procs.node("wk", "--workers", "2")
    env = {**os.environ, **(node.env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "chat_cluster", *node.args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"{node.port} is already in use" in done.stderr


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm", "ctrl_c"])
async def test_a_stop_drains_every_workers_sockets_with_1001(
    procs: NodeProcs, ctrl_c: bool
) -> None:
    """SIGTERM to the supervisor, or a terminal's Ctrl-C (SIGINT to the whole process
    group: workers ignore it and drain on the SIGTERM the supervisor sends them for it):
    every socket of every worker closes with 1001 and the node exits 0."""
    node = procs.node("wk", "--workers", "2", "--grace", "5")
    url = node.url.replace("http", "ws") + "/ws"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    sockets = [await websockets.connect(url, additional_headers=headers) for _ in range(8)]
    assert node.proc is not None
    if ctrl_c:
        os.killpg(node.proc.pid, signal.SIGINT)
    else:
        node.proc.send_signal(signal.SIGTERM)
    for ws in sockets:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert await asyncio.to_thread(node.proc.wait, 30) == 0


def test_only_the_first_worker_saves_snapshots(nats: NatsServer, tmp_path: Path) -> None:
    """Every worker holds the whole log; one saver per node is enough."""
    saves = {}
    for index in (0, 1):
        app = create_app(node_settings(nats), worker=Worker(index, 2, tmp_path))
        saves[index] = app.state.node.saves_snapshots
    assert saves == {0: True, 1: False}
