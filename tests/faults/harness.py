"""Real processes for fault scenarios: 1 or 3 nats-servers, N chat nodes, the archiver.

Every process can be killed (SIGKILL), paused (SIGSTOP/SIGCONT) and restarted
on the same data. Nothing here fakes NATS or the log; everything listens on
127.0.0.1 and is torn down by ``close()``, also when a scenario fails.
"""

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from chat_cluster.admin import ensure_stream
from chat_cluster.credentials import Credentials
from chat_cluster.local import Service
from chat_cluster.natsserver import NatsServer, ServerConfig
from chat_cluster.processes import free_port
from chatlog import LogSettings, StreamSpec
from chatlog.roles import ADMIN, ARCHIVER, NODE, PUBLISHER
from tests.faults.presence import NODE_ENV as PRESENCE_ENV
from tests.faults.proxy import Proxies, Proxy
from tests.support import SERVICE_ENV, STORE, auth, wait_until

WORKERS = int(os.environ.get("CHAT_TEST_WORKERS", "1"))
"""``--workers`` of every node (``nox -s faults_workers`` runs the suite with 2)."""


class Cluster:
    """With ``proxies``, every route between two servers and every client connection to a
    server runs through a test-owned proxy, so ``partition(server)`` can cut it off."""

    def __init__(
        self,
        nats_bin: Path,
        workdir: Path,
        creds: Credentials,
        servers: int = 1,
        proxies: Proxies | None = None,
    ) -> None:
        self.workdir = workdir
        self.creds = creds
        self.servers: list[NatsServer] = []
        self.proxies = proxies
        self._around: dict[str, list[Proxy]] = {}
        self._client_urls: list[str] = []
        cluster_ports = [free_port() for _ in range(servers)] if servers > 1 else []
        client_ports = [free_port() for _ in range(servers)]
        pair: dict[tuple[int, int], Proxy] = {}
        if proxies is not None:
            for i in range(servers):
                for j in range(servers):
                    if i != j:
                        pair[i, j] = proxies.add(cluster_ports[j])
        for i in range(servers):
            name = f"s{i + 1}"
            if proxies is not None:
                routes = tuple(pair[i, j].port for j in range(servers) if j != i)
                client = proxies.add(client_ports[i])
                self._client_urls.append(f"nats://127.0.0.1:{client.port}")
                self._around[name] = [client, *(p for (a, b), p in pair.items() if i in (a, b))]
            else:
                routes = tuple(p for j, p in enumerate(cluster_ports) if j != i)
                self._client_urls.append(f"nats://127.0.0.1:{client_ports[i]}")
            config = ServerConfig(
                name=name,
                store_dir=workdir / f"js-{name}",
                port=client_ports[i],
                monitor_port=free_port(),
                cluster_port=cluster_ports[i] if cluster_ports else None,
                routes=routes,
                # Through proxies, peers must not learn (and use) each other's real ports.
                cluster_advertise="127.0.0.1:1" if proxies is not None else None,
                no_advertise=proxies is not None,
                # Credentials on, as in production: JetStream counts every replica of a
                # stream against the account, so it gets all servers' storage.
                auth=auth(creds, STORE * servers),
                store_bytes=STORE,
            )
            self.servers.append(NatsServer(nats_bin, config, workdir, creds=creds))
        self.nodes: dict[str, Service] = {}
        self.archiver: Service | None = None
        self._count = 0

    @property
    def nats_urls(self) -> str:
        return ",".join(self._client_urls)

    def partition(self, server: NatsServer) -> None:
        """Cut ``server`` off from its peers and from every client."""
        assert self.proxies is not None, "build the Cluster with proxies to partition it"
        self.proxies.cut(self._around[server.config.name])

    def heal(self, server: NatsServer) -> None:
        assert self.proxies is not None
        self.proxies.heal(self._around[server.config.name])

    @property
    def replicas(self) -> int:
        return 3 if len(self.servers) == 3 else 1

    def start_nats(self) -> None:
        """Start every server, then create the streams as the admin (as `up` and the
        chart's Job do before any service starts)."""
        for server in self.servers:
            server.start()
        for server in self.servers:
            server.wait_ready(30)
        asyncio.run(self.ensure_streams())

    def log_settings(self, role: str) -> LogSettings:
        return LogSettings(
            nats_urls=tuple(self.nats_urls.split(",")), creds=str(self.creds.path(role))
        )

    async def ensure_streams(self) -> None:
        spec = StreamSpec(replicas=self.replicas)
        await ensure_stream(self.log_settings(ADMIN), spec, 60, "test admin")

    def raw_creds(self) -> str:
        """The publisher role's nkey: what `nats pub` needs."""
        return str(self.creds.path(PUBLISHER))

    def add_node(self, wait: bool = True) -> Service:
        self._count += 1
        name = f"node-{self._count}"
        port = free_port()
        args = [
            "node",
            "--nats-url",
            self.nats_urls,
            "--port",
            str(port),
            "--node-id",
            name,
            "--grace",
            "3",
            "--workers",
            str(WORKERS),
        ]
        node = Service(
            name,
            args,
            port,
            self.workdir / f"{name}.log",
            env={**self.creds.env(NODE), **SERVICE_ENV, **PRESENCE_ENV},
        )
        node.start()
        # The load thread lists live nodes while a scenario adds them: swap in a new dict
        # rather than grow the one it may be iterating.
        self.nodes = {**self.nodes, name: node}
        if wait:
            self.wait_ready(node)
        return node

    def start_archiver(self) -> Service:
        port = free_port()
        args = [
            "archiver",
            "--nats-url",
            self.nats_urls,
            "--port",
            str(port),
        ]
        self.archiver = Service(
            "archiver",
            args,
            port,
            self.workdir / "archiver.log",
            env={**self.creds.env(ARCHIVER), **SERVICE_ENV},
        )
        self.archiver.start()
        self.wait_ready(self.archiver)
        return self.archiver

    def wait_ready(self, service: Service, timeout: float = 30) -> None:
        wait_until(service.ready, timeout=timeout, what=f"{service.name} ready")

    def restart(self, service: Service) -> None:
        service.stop(5)
        service.start()

    def kill(self, service: Service) -> None:
        assert service.proc is not None
        os.killpg(service.proc.pid, signal.SIGKILL)  # with its workers, as a crash would
        service.proc.wait(10)
        wait_until(lambda: not _group_alive(service.proc.pid), 10, f"{service.name}'s workers gone")

    def pause(self, service: Service | NatsServer) -> None:
        _signal(service, signal.SIGSTOP)

    def resume(self, service: Service | NatsServer) -> None:
        _signal(service, signal.SIGCONT)

    def stream_leader(self) -> NatsServer:
        """The server that leads the CHAT stream now, from any live server's monitor."""
        leader = wait_until(self._stream_leader, timeout=15, what="a known stream leader")
        assert leader is not None
        return leader

    def _stream_leader(self) -> NatsServer | None:
        for server in self.servers:
            if not server.running:
                continue
            info = monitor(server, "/jsz?streams=true")
            for account in info.get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    leader = (stream.get("cluster") or {}).get("leader")
                    if stream.get("name") == "CHAT" and leader:
                        return next(s for s in self.servers if s.config.name == leader)
        return None

    def healthy(self) -> bool:
        """Every server's /healthz is 200: JetStream has a meta leader and is current."""
        for server in self.servers:
            url = f"http://{server.config.host}:{server.config.monitor_port}/healthz"
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status != 200:
                        return False
            except (urllib.error.URLError, OSError):
                return False
        return True

    def leaders(self, seen_by: NatsServer) -> tuple[str | None, str | None]:
        """(meta leader, CHAT stream leader) as one server sees them now."""
        info = monitor(seen_by, "/jsz?streams=true")
        meta = (info.get("meta_cluster") or {}).get("leader")
        stream = None
        for account in info.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == "CHAT":
                    stream = (detail.get("cluster") or {}).get("leader")
        return meta, stream

    def close(self) -> None:
        for service in [*self.nodes.values(), *([self.archiver] if self.archiver else [])]:
            if service.proc is not None and service.proc.poll() is None:
                service.proc.send_signal(signal.SIGCONT)
            service.stop(5)
        for server in self.servers:
            server.signal(signal.SIGCONT)
            server.kill()


def _signal(service: Service | NatsServer, sig: int) -> None:
    """A node with its workers (its own process group); a NATS server alone."""
    assert service.proc is not None
    if isinstance(service, Service):
        os.killpg(service.proc.pid, sig)
    else:
        service.proc.send_signal(sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def monitor(server: NatsServer, path: str) -> Any:
    url = f"http://{server.config.host}:{server.config.monitor_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError):
        return {}
