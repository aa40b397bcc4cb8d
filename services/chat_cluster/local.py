"""``chat-cluster up``: NATS, the archiver and N chat nodes as processes on 127.0.0.1.

The supervisor restarts a service that dies (as Kubernetes would), so
``kill -9`` of a node shows recovery: the new process replays the log and
turns ready with every message.
"""

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chat_cluster.natsserver import (
    NatsServer,
    NatsServerError,
    ServerConfig,
    checked_binary,
    port_free,
    terminate,
)
from chatlog import ChatLog, LogError, StreamSpec

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Ports:
    nodes: tuple[int, ...]
    archiver: int
    nats: tuple[int, ...]
    nats_monitor: tuple[int, ...]
    nats_cluster: tuple[int, ...]

    @classmethod
    def for_base(cls, base: int | None, nodes: int, nats_servers: int) -> "Ports":
        if nodes < 1 or nodes > 99:
            raise NatsServerError("--nodes must be between 1 and 99")
        if base is None:
            node_base, archiver, nats, monitor, route = 8000, 8100, 4222, 8222, 6222
        else:
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

    def __init__(self, name: str, args: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.args = args
        self.port = port
        self.log_path = log_path
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
            # Own session: a Ctrl-C on the terminal reaches only the supervisor, which
            # then stops the nodes before the NATS servers they are draining into.
            start_new_session=True,
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


class LocalCluster:
    def __init__(self, ports: Ports, data_dir: str) -> None:
        self.ports = ports
        self.data = Path(data_dir).resolve()
        self._stop = False

    def run(self) -> int:
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
        servers = self._nats_servers(binary)
        services: list[Service] = []
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            for server in servers:
                server.start()
            for server in servers:
                server.wait_ready(30)
            urls = ",".join(s.config.url for s in servers)
            replicas = 3 if len(servers) == 3 else 1
            asyncio.run(_ensure_stream(urls, replicas))
            services = self._services(urls, replicas, logs)
            for service in services:
                service.start()
            self._wait_ready(services, timeout=60)
            self._print_table(servers, services, version, binary)
            self._write_state(servers, services)
            self._supervise(servers, services)
        finally:
            for service in services:
                service.stop(12)
            for server in servers:
                server.stop()
            print("chat-cluster up: stopped; data kept in", self.data, flush=True)
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop = True

    def _nats_servers(self, binary: Path) -> list[NatsServer]:
        servers = []
        count = len(self.ports.nats)
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
            )
            servers.append(NatsServer(binary, config, self.data / "logs"))
        return servers

    def _services(self, urls: str, replicas: int, logs: Path) -> list[Service]:
        common = ["--nats-url", urls, "--host", HOST, "--stream-replicas", str(replicas)]
        services = [
            Service(
                "archiver",
                ["archiver", *common, "--port", str(self.ports.archiver)],
                self.ports.archiver,
                logs / "archiver.log",
            )
        ]
        for i, port in enumerate(self.ports.nodes, 1):
            args = ["node", *common, "--port", str(port), "--node-id", f"node-{i}"]
            services.append(Service(f"node-{i}", args, port, logs / f"node-{i}.log"))
        return services

    def _wait_ready(self, services: list[Service], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending and not self._stop:
            pending = [s for s in pending if not s.ready()]
            for service in pending:
                if service.proc is not None and service.proc.poll() is not None:
                    raise NatsServerError(f"{service.name} exited; see {service.log_path}")
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise NatsServerError(f"not ready after {timeout}s: {names}")
            time.sleep(0.1)

    def _supervise(self, servers: list[NatsServer], services: list[Service]) -> None:
        while not self._stop:
            for service in services:
                if service.proc is not None and service.proc.poll() is not None:
                    code = service.proc.returncode
                    service.restarts += 1
                    print(f"{service.name} exited ({code}); restarting", flush=True)
                    service.stop(1)
                    service.start()
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
        print("`chat-cluster status` shows readiness, applied seq, lag and connections")
        print(
            f"data: {self.data}   logs: {self.data / 'logs'}   Ctrl-C stops everything", flush=True
        )

    def _write_state(self, servers: list[NatsServer], services: list[Service]) -> None:
        """cluster.json: every service's URL and pid, for `kill -9` in the walkthrough."""
        state = {
            "services": {
                s.name: {"url": s.url, "pid": s.proc.pid if s.proc else None} for s in services
            },
            "nats": [s.config.url for s in servers],
        }
        (self.data / "cluster.json").write_text(json.dumps(state, indent=2))


async def _ensure_stream(urls: str, replicas: int) -> None:
    # A fresh R3 cluster needs a moment to elect its meta leader: retry until it answers.
    deadline = time.monotonic() + 30
    while True:
        try:
            log = await ChatLog.connect(
                urls.split(","), name="chat-cluster up", spec=StreamSpec(replicas=replicas)
            )
            try:
                await log.ensure_stream()
                return
            finally:
                await log.close()
        except LogError as exc:
            if time.monotonic() > deadline:
                raise NatsServerError(f"cannot ensure the CHAT stream: {exc}") from exc
            await asyncio.sleep(0.25)
