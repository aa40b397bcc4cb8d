"""``chat-cluster up`` and ``down``: NATS, the archiver and N chat nodes as processes on
127.0.0.1, in a data directory that one ``up`` at a time owns.

The supervisor restarts a service that dies (as Kubernetes would), so ``kill -9``
of a node shows recovery: the new process replays the log and turns ready with
every message. Every child gets SIGTERM if ``up`` itself dies, even by SIGKILL.
"""

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from auth import keys
from chat_cluster.admin import ensure_stream
from chat_cluster.credentials import Credentials
from chat_cluster.natsserver import Auth, NatsServer, ServerConfig, checked_binary
from chat_cluster.processes import die_with_parent, port_free, terminate
from chat_cluster.settings import UpSettings
from chatlog import LogError, LogSettings, StreamSpec
from chatlog.roles import ADMIN, ARCHIVER, NODE
from options import ConfigError

HOST = "127.0.0.1"


class ClusterError(Exception):
    """The local cluster could not start or keep running (a service exited, not ready)."""


LOCK = "up.lock"
LAYOUT = "layout.json"
STREAM_DEADLINE = 30.0
"""Seconds ``up`` waits for JetStream to accept the stream (a fresh R3 cluster elects first)."""


@dataclass(frozen=True)
class Ports:
    nodes: tuple[int, ...]
    archiver: int
    nats: tuple[int, ...]
    nats_monitor: tuple[int, ...]
    nats_cluster: tuple[int, ...]

    @classmethod
    def for_base(cls, base: int | None, nodes: int, nats_servers: int) -> "Ports":
        if base is None:
            node_base, archiver, nats, monitor, route = 8000, 8100, 4222, 8222, 6222
        else:
            highest = base + 220 + nats_servers - 1
            if base < 1024 or highest > 65535:
                raise ConfigError(
                    f"--base-port {base}: ports {base + 1}..{highest} are needed; "
                    f"use 1024..{65535 - 220 - nats_servers + 1}"
                )
            node_base, archiver = base, base + 100
            nats, monitor, route = base + 200, base + 220, base + 210
        return cls(
            nodes=tuple(node_base + i for i in range(1, nodes + 1)),
            archiver=archiver,
            nats=tuple(nats + i for i in range(nats_servers)),
            nats_monitor=tuple(monitor + i for i in range(nats_servers)),
            nats_cluster=tuple(route + i for i in range(nats_servers)) if nats_servers > 1 else (),
        )

    def named(self) -> list[tuple[str, int]]:
        out = [(f"chat node {i}", p) for i, p in enumerate(self.nodes, 1)]
        out.append(("archiver", self.archiver))
        for i, (p, m) in enumerate(zip(self.nats, self.nats_monitor, strict=True), 1):
            out += [(f"nats-server n{i}", p), (f"nats-server n{i} monitor", m)]
        out += [(f"nats-server n{i} cluster", p) for i, p in enumerate(self.nats_cluster, 1)]
        return out


def is_ready(base_url: str) -> bool:
    """True when the service at ``base_url`` answers 200 on /readyz."""
    try:
        with urllib.request.urlopen(base_url + "/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Service:
    """A chat node or the archiver, run as ``python -m chat_cluster <kind> ...``."""

    def __init__(
        self,
        name: str,
        args: list[str],
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        bound_to_parent: bool = False,
    ) -> None:
        self.name = name
        self.args = args
        self.port = port
        self.log_path = log_path
        self.env = env
        """Extra environment variables (credentials travel here, never in ``args``)."""
        self.bound_to_parent = bound_to_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        if self._log is not None:
            self._log.close()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chat_cluster", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env} if self.env else None,
            # Own session: a Ctrl-C on the terminal reaches only the supervisor, which
            # then stops the nodes before the NATS servers they are draining into.
            start_new_session=True,
            preexec_fn=die_with_parent() if self.bound_to_parent else None,
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ready(self) -> bool:
        return is_ready(self.url)

    def stop(self, timeout: float) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def owned(data: Path) -> Iterator[None]:
    """Hold the data directory's lock for as long as ``up`` runs. The kernel releases it
    when the process dies, however it dies, so a stale lock file never blocks."""
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    data.chmod(0o700)  # logs, the store and credentials: for this user only
    path = data / LOCK
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise ConfigError(
                f"already running here (pid {holder}): {data}; "
                f"stop it with `chat-cluster down --data-dir {data}`, or pass another --data-dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def check_layout(data: Path, nats_servers: int) -> None:
    """A data directory keeps the NATS layout it was made with: the stores of one
    standalone server and of a 3-server cluster are not interchangeable."""
    path = data / LAYOUT
    made_with: int | None = None
    if path.exists():
        made_with = int(json.loads(path.read_text())["nats_servers"])
    elif (data / "nats").is_dir():  # made before layout.json existed
        made_with = 3 if (data / "nats" / "n2").is_dir() else 1
    if made_with is not None and made_with != nats_servers:
        raise ConfigError(
            f"{data} was made with --nats-cluster {made_with}; run `up` with "
            f"--nats-cluster {made_with}, or use another --data-dir for {nats_servers}"
        )
    path.write_text(json.dumps({"nats_servers": nats_servers}) + "\n")


def down(data_dir: str) -> int:
    """Stop the ``up`` that owns ``data_dir`` (SIGTERM), and wait until it has stopped."""
    data = Path(data_dir).resolve()
    path = data / LOCK
    if not path.exists():
        print(f"chat-cluster down: no cluster in {data}", file=sys.stderr)
        return 1
    with path.open("r") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print(f"chat-cluster down: nothing running in {data}", file=sys.stderr)
            return 1
        except BlockingIOError:
            pass
        pid = int(lock.read().strip() or 0)
        if pid <= 0:
            print(f"chat-cluster down: {path} names no process", file=sys.stderr)
            return 1
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                print(f"chat-cluster down: stopped (pid {pid}); data kept in {data}")
                return 0
            except BlockingIOError:
                time.sleep(0.1)
    print(f"chat-cluster down: pid {pid} still running after 60 s", file=sys.stderr)
    return 1


class LocalCluster:
    def __init__(self, settings: UpSettings) -> None:
        self.settings = settings
        self.ports = Ports.for_base(settings.base_port, settings.nodes, settings.nats_cluster)
        self.data = Path(settings.data_dir).resolve()
        self._stop = False

    def run(self) -> int:
        with owned(self.data):
            check_layout(self.data, self.settings.nats_cluster)
            return self._run(Credentials.ensure(self.data))

    def _run(self, creds: Credentials) -> int:
        for name, port in self.ports.named():
            if not port_free(port, HOST):
                print(
                    f"chat-cluster up: port {port} ({name}) is already in use on {HOST}; "
                    "stop what uses it or pass --base-port",
                    file=sys.stderr,
                )
                return 2
        binary, version = checked_binary()
        logs = self.data / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        servers = self._nats_servers(binary, creds)
        services: list[Service] = []
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            for server in servers:
                server.start()
            for server in servers:
                server.wait_ready(30)
            urls = tuple(s.config.url for s in servers)
            replicas = 3 if len(servers) == 3 else 1
            log = LogSettings(nats_urls=urls, creds=str(creds.path(ADMIN)))
            spec = StreamSpec(replicas=replicas)
            try:
                asyncio.run(ensure_stream(log, spec, STREAM_DEADLINE, "chat-cluster up"))
            except LogError as exc:
                raise ClusterError(f"cannot ensure the CHAT stream: {exc}") from exc
            services = self._services(",".join(urls), logs, creds)
            for service in services:
                service.start()
            self._wait_ready(services, timeout=60)
            # cluster.json first: once the table says the cluster is up, `send`, `tail` and
            # `status` find it (a test read it right after the table and missed it once).
            self._write_state(servers, services)
            self._print_table(servers, services, version, binary)
            self._supervise(servers, services)
        finally:
            for service in services:
                service.stop(12)
            for server in servers:
                server.stop()
            with contextlib.suppress(OSError):
                (self.data / "cluster.json").unlink()
            print("chat-cluster up: stopped; data kept in", self.data, flush=True)
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop = True

    def _store_bytes(self) -> int:
        free = shutil.disk_usage(self.data).free
        return min(self.settings.store_bytes, free // 2)

    def _nats_servers(self, binary: Path, creds: Credentials) -> list[NatsServer]:
        servers = []
        store = self._store_bytes()
        count = len(self.ports.nats)
        # The account's storage is what all servers hold together: JetStream counts each
        # replica of a stream against it.
        auth = Auth(creds.users(), store * count, creds.route_password)
        for i in range(count):
            name = f"n{i + 1}"
            routes = tuple(p for j, p in enumerate(self.ports.nats_cluster) if j != i)
            config = ServerConfig(
                name=name,
                store_dir=self.data / "nats" / name,
                port=self.ports.nats[i],
                monitor_port=self.ports.nats_monitor[i],
                cluster_port=self.ports.nats_cluster[i] if count > 1 else None,
                routes=routes,
                auth=auth,
                store_bytes=store,
            )
            servers.append(NatsServer(binary, config, self.data / "logs", bound_to_parent=True))
        return servers

    def _auth_env(self) -> dict[str, str]:
        """Token keys: a signing key generated once in <data>/auth, its JWKS for the
        services (``chat-cluster token`` signs with the key)."""
        # The chat page of one node talks to the others (failover): they allow its origin.
        origins = ",".join(f"http://{HOST}:{port}" for port in self.ports.nodes)
        if not self.settings.auth:
            return {"AUTH": "none", "ALLOWED_ORIGINS": origins}
        keys.generate(self.data / "auth")
        jwks = str(self.data / "auth" / keys.JWKS)
        return {"AUTH": "jwt", "JWKS_FILE": jwks, "ALLOWED_ORIGINS": origins}

    def _services(self, urls: str, logs: Path, creds: Credentials) -> list[Service]:
        common = ["--nats-url", urls, "--host", HOST]
        auth = self._auth_env()
        services = [
            Service(
                "archiver",
                ["archiver", *common, "--port", str(self.ports.archiver)],
                self.ports.archiver,
                logs / "archiver.log",
                env={**creds.env(ARCHIVER), **auth},
                bound_to_parent=True,
            )
        ]
        for i, port in enumerate(self.ports.nodes, 1):
            args = ["node", *common, "--port", str(port), "--node-id", f"node-{i}"]
            services.append(
                Service(
                    f"node-{i}",
                    args,
                    port,
                    logs / f"node-{i}.log",
                    env={**creds.env(NODE), **auth},
                    bound_to_parent=True,
                )
            )
        return services

    def _wait_ready(self, services: list[Service], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending and not self._stop:
            pending = [s for s in pending if not s.ready()]
            for service in pending:
                if service.proc is not None and service.proc.poll() is not None:
                    raise ClusterError(f"{service.name} exited; see {service.log_path}")
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise ClusterError(f"not ready after {timeout}s: {names}")
            time.sleep(0.1)

    def _supervise(self, servers: list[NatsServer], services: list[Service]) -> None:
        while not self._stop:
            for server in servers:
                if server.proc is not None and server.proc.poll() is not None:
                    code = server.proc.returncode
                    server.stop(1)
                    server.start()
                    pid = server.proc.pid if server.proc else "?"
                    name = server.config.name
                    print(f"nats-server {name} exited ({code}); restarted as pid {pid}", flush=True)
                    self._write_state(servers, services)
            for service in services:
                if service.proc is not None and service.proc.poll() is not None:
                    code = service.proc.returncode
                    service.restarts += 1
                    service.stop(1)
                    service.start()
                    pid = service.proc.pid if service.proc else "?"
                    print(f"{service.name} exited ({code}); restarted as pid {pid}", flush=True)
                    self._write_state(servers, services)
            time.sleep(0.2)

    def _print_table(
        self, servers: list[NatsServer], services: list[Service], version: str, binary: Path
    ) -> None:
        rows = [(s.name, s.url, str(s.proc.pid if s.proc else "")) for s in services]
        rows += [(s.config.name, s.config.url, str(s.proc.pid if s.proc else "")) for s in servers]
        width = max(len(r[0]) for r in rows)
        print(f"chat-cluster is up (nats-server {version}, {binary})", flush=True)
        for name, url, pid in rows:
            metrics = f"metrics {url}/metrics" if url.startswith("http") else ""
            print(f"  {name:<{width}}  {url:<26} pid {pid:<8} {metrics}".rstrip())
        print("`chat-cluster status` shows readiness, applied seq, lag and connections;")
        who = "as dev (a token for 12 hours)" if self.settings.auth else "anonymously"
        print(f"the chat page, signed in {who}: {self.page_url()}")
        if self.settings.auth:
            print(
                "user tokens: `chat-cluster token --user ada --read '*' --send '*'` "
                "(send and tail mint their own)"
            )
        else:
            print("AUTH=none: anonymous mode, anyone may read everything and send as anyone")
        print(
            "NATS wants credentials: `chat-cluster creds publisher` (for `nats pub`), "
            "`creds admin` (streams)"
        )
        print(
            f"data: {self.data}   logs: {self.data / 'logs'}   Ctrl-C stops everything", flush=True
        )

    def page_url(self) -> str:
        """The first node's chat page, with a dev token and every node in the fragment
        (which the browser keeps to itself: it reaches no server and no log)."""
        nodes = ",".join(f"http://{HOST}:{port}" for port in self.ports.nodes)
        fragment = {"nodes": nodes, "channel": "general"}
        if self.settings.auth:
            key = keys.load(self.data / "auth" / keys.SIGNING_KEY)
            fragment["token"] = keys.mint(key, "dev", ttl=12 * 3600, read=("*",), send=("*",))
        else:
            fragment["anonymous"] = "1"
        return f"http://{HOST}:{self.ports.nodes[0]}/#" + urllib.parse.urlencode(fragment)

    def _write_state(self, servers: list[NatsServer], services: list[Service]) -> None:
        """cluster.json: every service's URL and pid (``status``, ``send`` and ``tail`` read it)."""
        state = {
            "up_pid": os.getpid(),
            "services": {
                s.name: {"url": s.url, "pid": s.proc.pid if s.proc else None} for s in services
            },
            "nats": [
                {"name": s.config.name, "url": s.config.url, "pid": s.proc.pid if s.proc else None}
                for s in servers
            ],
        }
        tmp = self.data / "cluster.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.data / "cluster.json")
