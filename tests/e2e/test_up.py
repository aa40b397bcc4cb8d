"""End to end through ``chat-cluster up``, as a user runs it: the seed's walkthrough."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from auth import keys
from chat_cluster.local import Ports
from chat_cluster.processes import port_free
from tests.support import (
    KEYS_DIR,
    PYTHON,
    all_messages,
    get_json,
    http,
    nats_cli,
    status_of,
    wait_until,
)


class Up:
    def __init__(self, base: int, data: Path, *extra: str) -> None:
        self.base, self.data, self.extra = base, data, extra
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.lines = []
        # `up` keeps a signing key it finds in <data>/auth: give it the tests' own, so the
        # tests' tokens are good here too.
        key = self.data / "auth" / keys.SIGNING_KEY
        if not key.exists():
            key.parent.mkdir(parents=True, mode=0o700)
            shutil.copy(KEYS_DIR / keys.SIGNING_KEY, key)
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "chat_cluster",
                "up",
                "--base-port",
                str(self.base),
                "--data-dir",
                str(self.data),
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        wait_until(
            lambda: any("Ctrl-C" in line for line in self.lines) or self._dead(),
            timeout=90,
            what="up to print its table",
        )
        if self._dead():
            self.stop()  # closes our end of its output pipe
            raise AssertionError("".join(self.lines))

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.append(line)

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self._reader.join(10)
            self.proc.stdout.close()

    def node(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base + i}"

    @property
    def archiver(self) -> str:
        return f"http://127.0.0.1:{self.base + 100}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.base + 200}"

    def pid(self, name: str) -> int:
        state = json.loads((self.data / "cluster.json").read_text())
        return int(state["services"][name]["pid"])


def free_base(nodes: int = 3, nats_servers: int = 1) -> int:
    """A --base-port whose every port (as `up` itself lays them out) is free now. Below
    32768, so no port can be taken meanwhile as the source of an outgoing connection."""
    for _ in range(50):
        base = random.randrange(10000, 32000, 1000)
        ports = Ports.for_base(base, nodes, nats_servers).named()
        if all(port_free(port) for _, port in ports):
            return base
    raise RuntimeError("no free port range")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    cluster = Up(free_base(), tmp_path / "data")
    cluster.start()
    yield cluster
    cluster.stop()


def texts(base: str, channel: str = "default-channel") -> list[str]:
    return [m["text"] for m in all_messages(base, channel)]


def test_walkthrough(up: Up) -> None:
    # A POST on node 1 shows on node 3 (and read-your-writes with min_seq).
    status, sent = http("POST", up.node(1) + "/messages", {"text": "hello from 1"})
    assert status == 201
    page = get_json(f"{up.node(3)}/messages?min_seq={sent['seq']}")
    assert [m["text"] for m in page["messages"]] == ["hello from 1"]

    # chat-cluster send and tail talk to the nodes.
    out = subprocess.run(
        [
            PYTHON,
            "-m",
            "chat_cluster",
            "send",
            "--node",
            up.node(2),
            "--data-dir",
            str(up.data),
            "--user",
            "ada",
            "via cli",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and out.stdout.startswith("seq=2 "), out.stderr
    out = subprocess.run(
        [
            PYTHON,
            "-m",
            "chat_cluster",
            "tail",
            "--node",
            up.node(3),
            "--data-dir",
            str(up.data),
            "--after",
            "0",
            "--count",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # The sender is the token's: the tests' admin, then ada (minted by `send` for --user).
    assert out.stdout.splitlines() == ["[1] test-admin: hello from 1", "[2] ada: via cli"]

    # `up` says where /metrics is; `status` reads every service's readiness and metrics
    assert any(f"metrics {up.node(1)}/metrics" in line for line in up.lines)
    status_cmd = [PYTHON, "-m", "chat_cluster", "status", "--data-dir", str(up.data)]

    exit_codes: list[int] = []

    def table() -> dict[str, list[str]]:
        out = subprocess.run(status_cmd, capture_output=True, text=True, timeout=30)
        exit_codes.append(out.returncode)
        return {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}

    rows = wait_until(
        lambda: (t := table()) and all(t[f"node-{i}"][3] == "2" for i in (1, 2, 3)) and t,
        what="status to show applied seq 2 on every node",
    )
    for i in (1, 2, 3):  # service, url, ready, applied, lag, lag_s, conns
        assert rows[f"node-{i}"][2:] == ["ready", "2", "0", "0.000", "0"], rows
    assert rows["archiver"][2] == "ready"
    assert exit_codes[-1] == 0  # everything ready

    # verify finds the nodes, NATS and the archiver's credentials in the data directory
    verified = cli("verify", "--data-dir", str(up.data))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("equal to the log at seq 2") == 3

    # token and grant, as the README's walkthrough does them, with the cluster's own key
    # and admin credentials found in its data directory.
    bob = cli("token", "--data-dir", str(up.data), "--user", "bob").stdout.strip()
    ops = up.node(1) + "/messages?channel=ops"
    assert http("GET", ops, token=bob)[0] == 403
    granted = cli("grant", "bob", "ops", "read", "--data-dir", str(up.data))
    assert granted.stdout.strip() == "bob on ops: read=true send=false", granted.stderr
    wait_until(lambda: http("GET", ops, token=bob)[0] == 200, what="grant applied")

    # kill -9 of node 2: the supervisor restarts it, it replays, turns ready, holds everything.
    old = up.pid("node-2")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: up.pid("node-2") != old, what="node-2 restarted")
    wait_until(lambda: status_of(up.node(2) + "/readyz") == 200, timeout=30, what="ready")
    assert texts(up.node(2)) == ["hello from 1", "via cli"]

    # stopping and starting `up` again keeps every message
    up.stop()
    up.start()
    for base in (up.node(1), up.node(2), up.node(3)):
        assert texts(base) == ["hello from 1", "via cli"]
    assert [
        m["text"]
        for m in all_messages(up.archiver + "/messages/default-channel", "default-channel")
    ] == ["hello from 1", "via cli"]


def test_nats_cli_publish_reaches_every_node_and_the_archiver(up: Up) -> None:
    nats = nats_cli()
    if nats is None:
        pytest.skip("the nats CLI is not built here (nox builds it when Go is available)")
    anonymous = subprocess.run(
        [nats, "--server", up.nats_url, "pub", "chat.default-channel", "Hello everyone!"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert anonymous.returncode != 0 and "Authorization Violation" in anonymous.stderr
    # The walkthrough's way: the publisher role's nkey, found with `chat-cluster creds`.
    found = cli("creds", "publisher", "--data-dir", str(up.data))
    assert found.returncode == 0, found.stderr
    creds = found.stdout.strip()
    assert oct(os.stat(creds).st_mode & 0o777) == "0o600"
    out = subprocess.run(
        [nats, "--server", up.nats_url, "--nkey", creds, "pub", "chat.default-channel",
         "Hello everyone!"],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for base in (up.node(1), up.node(2), up.node(3)):
        wait_until(lambda b=base: texts(b) == ["Hello everyone!"], timeout=10, what=base)
        [msg] = all_messages(base, "default-channel")
        assert msg["user"] == "nats" and msg["seq"] == 1
    archived = get_json(up.archiver + "/messages/default-channel")["messages"]
    assert [(m["seq"], m["text"]) for m in archived] == [(1, "Hello everyone!")]


def test_three_nats_servers_with_an_r3_stream(tmp_path: Path) -> None:
    cluster = Up(free_base(2, 3), tmp_path / "r3", "--nats-cluster", "3", "--nodes", "2")
    try:
        cluster.start()
        status, sent = http("POST", cluster.node(1) + "/messages", {"text": "replicated"})
        assert status == 201
        page = get_json(f"{cluster.node(2)}/messages?min_seq={sent['seq']}")
        assert [m["text"] for m in page["messages"]] == ["replicated"]
        conf = (tmp_path / "r3" / "logs" / "n2.conf").read_text()
        assert "routes" in conf and "sync_interval: always" in conf
    finally:
        cluster.stop()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "chat_cluster", *args], capture_output=True, text=True, timeout=timeout
    )


def child_pids(data: Path) -> list[int]:
    state = json.loads((data / "cluster.json").read_text())
    return [s["pid"] for s in state["services"].values()] + [n["pid"] for n in state["nats"]]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its dead parent's reaper) is not alive.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


def test_up_owns_its_directory_and_the_clients_find_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Up(free_base(1), data, "--nodes", "1")
    first.start()
    try:
        assert first.proc is not None
        before = (data / "cluster.json").read_text()
        # A second `up` on the same directory, whatever its ports, is refused: one line.
        second = cli("up", "--base-port", str(free_base(1)), "--data-dir", str(data))
        assert second.returncode == 2, second.stdout
        assert second.stderr.count("\n") == 1
        assert f"already running here (pid {first.proc.pid})" in second.stderr
        assert (data / "cluster.json").read_text() == before  # the first is untouched
        assert status_of(first.node(1) + "/readyz") == 200

        # send, tail and status find the running cluster from its cluster.json.
        sent = cli("send", "--data-dir", str(data), "found you")
        assert sent.returncode == 0 and sent.stdout.startswith("seq=1 "), sent.stderr
        tailed = cli("tail", "--data-dir", str(data), "--after", "0", "--count", "1")
        assert tailed.stdout.splitlines() == ["[1] cli: found you"], tailed.stderr
        assert cli("status", "--data-dir", str(data)).returncode == 0
        # A node address without a scheme means http.
        bare = first.node(1).removeprefix("http://")
        sent = cli("send", "--node", bare, "--data-dir", str(data), "bare")
        assert sent.stdout.startswith("seq=2 "), sent.stderr

        # `down` stops it, and every child with it.
        children = child_pids(data)
        stopped = cli("down", "--data-dir", str(data))
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: first.proc is not None and first.proc.poll() is not None, what="up")
        wait_until(lambda: not any(alive(p) for p in children), what="children gone")
        assert cli("down", "--data-dir", str(data)).returncode == 1  # nothing runs now
    finally:
        first.stop()

    # The directory holds a 1-server store: a 3-server cluster on it is refused by name.
    other = cli("up", "--nats-cluster", "3", "--base-port", str(free_base(3, 3)),
                "--data-dir", str(data))  # fmt: skip
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "--nats-cluster 1" in other.stderr, other.stderr


def test_children_die_with_a_killed_up(tmp_path: Path) -> None:
    cluster = Up(free_base(1), tmp_path / "data", "--nodes", "1")
    cluster.start()
    try:
        assert cluster.proc is not None
        children = child_pids(cluster.data)
        assert len(children) == 3 and all(alive(p) for p in children)
        cluster.proc.kill()  # SIGKILL: `up` runs no cleanup at all
        cluster.proc.wait(10)
        wait_until(lambda: not any(alive(p) for p in children), timeout=30, what="children gone")
    finally:
        cluster.stop()


def test_bad_arguments_give_one_line(tmp_path: Path) -> None:
    for args, named in (
        (["up", "--base-port", "65500"], "--base-port 65500"),
        (["up", "--nodes", "0"], "--nodes='0'"),
        (["up", "--nats-cluster", "2"], "--nats-cluster='2'"),
        (["send", "--node", "ftp://x", "hi"], "--node='ftp://x'"),
        (["send", "--channel", "no/slash", "hi"], "--channel='no/slash'"),
    ):
        out = cli(*args, "--data-dir", str(tmp_path))
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and named in out.stderr, (args, out.stderr)
