"""Helpers shared by the tests: waiting on conditions, real processes, HTTP over sockets.

Fixtures live in ``conftest.py``; everything a test module imports lives here.
"""

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import nats as nats_client
from litestar import Litestar
from litestar.testing import TestClient
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from auth import AuthSettings, keys
from chat.settings import NodeSettings
from chat_cluster.credentials import Credentials
from chat_cluster.local import Service
from chat_cluster.natsserver import Auth, NatsServer, ServerConfig
from chat_cluster.processes import free_port
from chatlog import ChatLog, LogSettings, StreamSpec
from chatlog.roles import ADMIN, ARCHIVER, NODE, inbox_prefix

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent

# One signing key for the whole test run, as `chat-cluster up` makes one per cluster: every
# service under test verifies tokens (auth is on, as in production).
KEYS_DIR = Path(tempfile.mkdtemp(prefix="chat-test-keys-"))
SIGNING_KEY = keys.load(keys.generate(KEYS_DIR))
JWKS_FILE = KEYS_DIR / keys.JWKS
SERVICE_ENV = {"AUTH": "jwt", "JWKS_FILE": str(JWKS_FILE), "SEND_RATE": "0"}
"""How the tests' node processes start. SEND_RATE 0: every test's load is one admin
token, whose sends a per-user rate would throttle; the limit has its own tests."""
AUTH = AuthSettings(jwks_file=str(JWKS_FILE))
ADMIN_TOKEN = keys.mint(SIGNING_KEY, "test-admin", ttl=24 * 3600, admin=True)
"""What the tests send unless they test tokens: may read and send everywhere."""


def token(user: str, **claims: Any) -> str:
    """A token for ``user`` signed with the test key (``read``/``send`` patterns, ``ttl``,
    ``admin``, ``name``, ``extra`` as :func:`auth.keys.mint` takes them)."""
    return keys.mint(SIGNING_KEY, user, **claims)


def bearer(value: str | None = ADMIN_TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"} if value else {}


def client(app: Litestar, value: str | None = ADMIN_TOKEN) -> TestClient:  # type: ignore[type-arg]
    """Litestar's test client for ``app``, sending ``value`` as its bearer token (HTTP and
    WebSocket handshakes alike)."""
    test_client: TestClient = TestClient(app)  # type: ignore[type-arg]
    test_client.headers.update(bearer(value))
    return test_client


def wait_until(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def until(check: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    """``wait_until`` for async tests: polls without blocking the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or 'condition'}")
        await asyncio.sleep(0.02)


def http(
    method: str,
    url: str,
    body: object | None = None,
    timeout: float = 10,
    token: str | None = ADMIN_TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    for name, value in {**bearer(token), **(headers or {})}.items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw.startswith((b"{", b"[")) else raw


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page (Prometheus's own parser), by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def metric(base: str, name: str, **labels: str) -> float:
    """One sample of a running service's /metrics; 0 while it has none (a counter not
    yet incremented)."""
    page = samples(http("GET", base + "/metrics")[1].decode())
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def get_json(url: str) -> Any:
    status, body = http("GET", url)
    assert status == 200, (url, status, body)
    return body


def status_of(url: str) -> int:
    try:
        return http("GET", url, timeout=2)[0]
    except (urllib.error.URLError, OSError):
        return 0


def all_messages(base: str, channel: str, min_seq: int = 0) -> list[dict[str, Any]]:
    """Walk a node's (or the archiver's) whole channel page by page. ``min_seq``: each
    page from a replica that has applied at least that seq (a node's pages may come
    from different workers of it, as from different nodes)."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        if "/messages/" in base:
            url = f"{base}?after={after}&limit=1000"
        else:
            url = f"{base}/messages?channel={channel}&after={after}&limit=1000&min_seq={min_seq}"
        page = get_json(url)["messages"]
        if not page:
            return out
        out += page
        after = page[-1]["seq"]


def nats_cli() -> str | None:
    """The real ``nats`` CLI, built by ``nox`` from its pinned Go module, if present."""
    explicit = os.environ.get("NATS_CLI")
    if explicit:
        return explicit
    built = ROOT / ".tools" / "bin" / "nats"
    if built.exists():
        return str(built)
    return shutil.which("nats")


PYTHON = sys.executable


STORE = 256 * 1024 * 1024
"""JetStream storage of a test server's account: the log gets 80% of it, snapshots 15%."""


def auth(creds: Credentials, store: int = STORE) -> Auth:
    return Auth(creds.users(), store, creds.route_password)


def said(text: str, **fields: Any) -> bytes:
    """A node's payload for ``text`` (what a chat node publishes on ``chat.<channel>.node``)."""
    return json.dumps({"text": text, **fields}).encode()


def start_server(
    nats_bin: Path, workdir: Path, creds: Credentials, name: str = "t1", **config: Any
) -> NatsServer:
    """A standalone nats-server on free ports with its store under ``workdir``, ready,
    admitting only the holders of ``creds`` (each with its role's permissions)."""
    settings = ServerConfig(
        name,
        workdir / f"js-{name}",
        free_port(),
        free_port(),
        auth=auth(creds),
        store_bytes=STORE,
        **config,
    )
    server = NatsServer(nats_bin, settings, workdir, creds=creds)
    server.start()
    server.wait_ready()
    return server


def log_settings(nats: NatsServer, role: str = NODE) -> LogSettings:
    """How the tests reach the log as ``role``: short timeouts, so failures show quickly."""
    assert nats.creds is not None
    return LogSettings(
        nats_urls=(nats.config.url,), creds=str(nats.creds.path(role)), publish_timeout=3.0
    )


async def open_log(nats: NatsServer, role: str = ADMIN) -> ChatLog:
    """A connected ChatLog with ``role``'s credentials (admin by default)."""
    return await ChatLog.open(log_settings(nats, role), f"test {role}", role)


async def ensure_streams(nats: NatsServer, **spec: Any) -> None:
    """What ``up`` and the chart's Job do before any service starts."""
    chatlog = await open_log(nats, ADMIN)
    try:
        await chatlog.ensure_stream(StreamSpec(**spec))
    finally:
        await chatlog.close()


def node_settings(nats: NatsServer, **overrides: Any) -> NodeSettings:
    """An in-process node's settings, with the watchdog and heartbeats made quick."""
    base: dict[str, Any] = {
        "node_id": "test-node",
        "log": log_settings(nats),
        "heartbeat": 0.5,
        "stall_after": 1.0,
        "watchdog_interval": 0.25,
        "grace": 2.0,
        "auth": AUTH,
        "send_rate": 0.0,
    }
    base.update(overrides)
    return NodeSettings(**base)


class NodeProcs:
    """Chat nodes (and the archiver) as real processes, started as a user starts them."""

    def __init__(self, nats: NatsServer, workdir: Path) -> None:
        self._nats = nats
        self._workdir = workdir
        self.started: list[Service] = []

    def node(self, name: str = "node", *extra: str, wait: bool = True) -> Service:
        port = free_port()
        args = [
            "node",
            "--nats-url",
            self._nats.config.url,
            "--port",
            str(port),
            "--node-id",
            name,
            *extra,
        ]
        service = Service(name, args, port, self._workdir / f"{name}.log", env=self._env(NODE))
        return self._start(service, wait)

    def archiver(self) -> Service:
        port = free_port()
        args = ["archiver", "--nats-url", self._nats.config.url, "--port", str(port)]
        log = self._workdir / "archiver.log"
        return self._start(Service("archiver", args, port, log, env=self._env(ARCHIVER)), True)

    def _env(self, role: str) -> dict[str, str]:
        assert self._nats.creds is not None
        return {**self._nats.creds.env(role), **SERVICE_ENV}

    def _start(self, service: Service, wait: bool) -> Service:
        service.start()
        self.started.append(service)
        if wait:
            wait_until(service.ready, timeout=30, what=f"{service.name} ready")
        return service

    def stop_all(self) -> None:
        for service in self.started:
            service.stop(10)


@asynccontextmanager
async def raw(nats: NatsServer, role: str | None) -> AsyncIterator[tuple[Client, list[str]]]:
    """A bare nats-py client with ``role``'s key (None: no credentials), and the errors
    the server reported to it."""
    assert nats.creds is not None
    errors: list[str] = []

    async def note(exc: Exception) -> None:
        errors.append(str(exc).lower())

    extra = {} if role is None else {"nkeys_seed": str(nats.creds.path(role))}
    nc = await nats_client.connect(
        nats.config.url,
        inbox_prefix=inbox_prefix(role or ADMIN),
        error_cb=note,
        max_reconnect_attempts=1,
        connect_timeout=2,
        **extra,
    )
    try:
        yield nc, errors
    finally:
        await nc.close()
