"""The ``chat-cluster`` command's own behaviour: the binary resolver, config errors, ports."""

import json
import os
import re
import socket
import stat
import subprocess
from pathlib import Path

import nkeys
import pytest

import options
from archiver.settings import ArchiverSettings
from chat.settings import NodeSettings
from chat_cluster.local import Service
from chat_cluster.natsserver import MIN_VERSION, NatsServer, ServerConfig
from chat_cluster.processes import free_port
from chat_cluster.settings import ClientSettings, EnsureSettings, UpSettings, node_url
from chatlog.roles import ADMIN, NODE
from tests.support import PYTHON, SERVICE_ENV, STORE, status_of, wait_until


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [PYTHON, "-m", "chat_cluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def test_nats_server_version_prints_path_and_version() -> None:
    out = cli("nats-server", "--version")
    assert out.returncode == 0, out.stderr
    path, version = out.stdout.strip().splitlines()
    assert Path(path).is_file() and os.access(path, os.X_OK)
    numbers = tuple(int(x) for x in version.split()[-1].split("."))
    assert numbers >= MIN_VERSION


def fake_binary(tmp_path: Path, version: str) -> Path:
    script = tmp_path / "nats-server"
    script.write_text(f"#!/bin/sh\necho 'nats-server: v{version}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_an_older_nats_server_is_refused(tmp_path: Path) -> None:
    old = fake_binary(tmp_path, "2.10.22")
    out = cli("nats-server", "--version", env={"NATS_SERVER_BIN": str(old)})
    assert out.returncode == 2
    assert "2.10.22" in out.stderr and ">= 2.12.5" in out.stderr


def test_nats_server_bin_wins_when_new_enough(tmp_path: Path) -> None:
    new = fake_binary(tmp_path, "2.14.9")
    out = cli("nats-server", "--version", env={"NATS_SERVER_BIN": str(new)})
    assert out.returncode == 0 and out.stdout.splitlines() == [str(new), "nats-server 2.14.9"]


def test_missing_nats_server_bin_is_named(tmp_path: Path) -> None:
    out = cli("nats-server", "--version", env={"NATS_SERVER_BIN": str(tmp_path / "nope")})
    assert out.returncode == 2 and "NATS_SERVER_BIN" in out.stderr


def test_bad_env_values_are_named() -> None:
    out = cli("node", env={"PORT": "eighty"})
    assert out.returncode == 2 and "PORT='eighty'" in out.stderr
    out = cli("node", env={"KEEP_PER_CHANNEL": "50"})
    assert out.returncode == 2 and "KEEP_PER_CHANNEL='50'" in out.stderr and ">= 100" in out.stderr
    out = cli("node", env={"SNAPSHOT_EVERY": "-1"})
    assert out.returncode == 2 and "SNAPSHOT_EVERY='-1'" in out.stderr and ">= 0" in out.stderr
    out = cli("node", "--nats-url", "http://127.0.0.1:4222")
    assert out.returncode == 2 and "must start with nats://" in out.stderr


def test_up_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli("up", "--base-port", str(port - 1), "--nodes", "1", "--data-dir", str(tmp_path))
    assert out.returncode == 2
    assert f"port {port} (chat node 1) is already in use" in out.stderr


def test_server_config_fsyncs_every_write(tmp_path: Path) -> None:
    text = ServerConfig("n1", tmp_path, 4222, 8222).render()
    assert "sync_interval: always" in text
    assert (
        "sync_interval" not in ServerConfig("n1", tmp_path, 4222, 8222, sync_always=False).render()
    )


def test_send_reports_errors_from_the_node() -> None:
    out = cli("send", "--node", "http://127.0.0.1:9", "hello")
    assert out.returncode == 1 and "cannot reach" in out.stderr


def test_ensure_stream_creates_checks_and_names_a_conflict(bare_nats: NatsServer) -> None:
    assert bare_nats.creds is not None
    env = {
        "NATS_URL": bare_nats.config.url,
        "STREAM_REPLICAS": "1",
        "MAX_TEXT_BYTES": "4096",
        **bare_nats.creds.env(ADMIN),
    }
    out = cli("ensure-stream", env=env)
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["replicas"] == 1 and created["max_text"] == 4096 and created["last_seq"] == 0
    # append-only, and 80% of the account's storage as its byte limit
    assert created["append_only"] is True and created["max_bytes"] == int(STORE * 0.8)

    # only an admin may: the node role's credentials are refused, naming the subject
    node = cli("ensure-stream", "--timeout", "3", env={**env, **bare_nats.creds.env(NODE)})
    assert node.returncode == 1 and "permissions violation" in node.stderr.lower()

    again = cli("ensure-stream", env=env)  # idempotent: the same stream, the same epoch
    assert again.returncode == 0 and json.loads(again.stdout)["epoch"] == created["epoch"]

    conflict = cli("ensure-stream", env={**env, "MAX_TEXT_BYTES": "100"})
    assert conflict.returncode == 1
    assert "chat_cluster.max_text" in conflict.stderr and "'4096'" in conflict.stderr


def test_ensure_stream_stops_at_once_on_credentials_nats_refuses(
    bare_nats: NatsServer, tmp_path: Path
) -> None:
    """A key NATS does not know is not a NATS that is down: no retrying until the deadline
    (300 s in the chart's Job), but the refusal, named."""
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    env = {"NATS_URL": bare_nats.config.url, "NATS_CREDS": str(stranger)}
    out = cli("ensure-stream", "--timeout", "600", env=env, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "refused the credentials" in out.stderr and "Authorization Violation" in out.stderr
    assert "gave up" not in out.stderr, out.stderr


def test_a_node_whose_credentials_nats_refuses_keeps_trying_and_says_so(
    bare_nats: NatsServer, tmp_path: Path
) -> None:
    """Unlike a one-shot command, a running service does not stop on refused credentials
    (an operator may be fixing the Secret): it stays up, not ready, and logs each try."""
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    port = free_port()
    args = ["node", "--nats-url", bare_nats.config.url, "--port", str(port)]
    env = {**SERVICE_ENV, "NATS_CREDS": str(stranger)}
    node = Service("node", args, port, tmp_path / "node.log", env=env)
    node.start()
    try:
        refusals = "refused the credentials"
        wait_until(lambda: node.log_path.read_text().count(refusals) >= 3, 30, "three refusals")
        assert node.proc is not None and node.proc.poll() is None
        assert status_of(node.url + "/readyz") == 503
    finally:
        node.stop(10)


def test_ensure_stream_gives_up_after_its_timeout() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    out = cli("ensure-stream", "--nats-url", f"nats://127.0.0.1:{port}", "--timeout", "1")
    assert out.returncode == 1 and "gave up after 1s" in out.stderr


def test_status_names_a_missing_cluster_and_a_service_that_is_down(tmp_path: Path) -> None:
    out = cli("status", "--data-dir", str(tmp_path))
    assert out.returncode == 1 and "cluster.json" in out.stdout
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    state = {"services": {"node-1": {"url": f"http://127.0.0.1:{port}", "pid": None}}}
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    out = cli("status", "--data-dir", str(tmp_path))
    assert out.returncode == 3, out.stdout
    row = out.stdout.splitlines()[1].split()
    assert row[:3] == ["node-1", f"http://127.0.0.1:{port}", "down"] and row[3:] == ["-"] * 4


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        ("node", NodeSettings),
        ("archiver", ArchiverSettings),
        ("ensure-stream", EnsureSettings),
        ("send", ClientSettings),
        ("tail", ClientSettings),
        ("up", UpSettings),
    ],
)
def test_help_shows_every_default_and_its_variable(command: str, settings: type) -> None:
    out = cli(command, "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for name in options.env_names(settings):
        if name in ("NATS_PASSWORD", "AUTH_HS256_SECRET", "CHAT_TOKEN"):
            # A secret: environment only, never a flag (`ps` shows flags).
            assert f"environment only: {name}: " in text or f" {name}: " in text, name
            assert f"--{name.lower().replace('_', '-')}" not in text
            continue
        assert f"env {name}; default: " in text, (command, name)
    flags = re.findall(r"^  (--[a-z-]+)", out.stdout, re.M)
    assert flags and all(re.search(re.escape(flag) + r"\b.*?default: ", text) for flag in flags), (
        command,
        flags,
    )


def test_node_urls_without_a_scheme_mean_http() -> None:
    assert node_url("127.0.0.1:8001") == "http://127.0.0.1:8001"
    assert node_url("https://chat.example/") == "https://chat.example"
    for bad in ("ftp://x", "http://", "http://h:99999", "http://h:1/path"):
        with pytest.raises(ValueError):
            node_url(bad)
