"""Fixtures: real nats-server processes on free ports with temporary stores; never mocks."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from chat.app import create_app
from chat.settings import NodeSettings
from chat_cluster.local import Service
from chat_cluster.natsserver import NatsServer, ServerConfig, checked_binary, free_port
from chatlog import ChatLog, StreamSpec
from tests.support import wait_until


@pytest.fixture(scope="session")
def nats_bin() -> Path:
    path, _ = checked_binary()
    return path


def start_server(nats_bin: Path, workdir: Path, name: str = "t1") -> NatsServer:
    config = ServerConfig(name, workdir / f"js-{name}", free_port(), free_port())
    server = NatsServer(nats_bin, config, workdir)
    server.start()
    server.wait_ready()
    return server


@pytest.fixture
def nats(nats_bin: Path, tmp_path: Path) -> Iterator[NatsServer]:
    server = start_server(nats_bin, tmp_path)
    yield server
    server.kill()


@pytest.fixture
async def chatlog(nats: NatsServer) -> AsyncIterator[ChatLog]:
    log = await ChatLog.connect([nats.config.url], name="test", spec=StreamSpec(), timeout=3)
    await log.ensure_stream()
    yield log
    await log.close()


def node_settings(nats: NatsServer, **overrides: object) -> NodeSettings:
    base: dict[str, object] = {
        "node_id": "test-node",
        "nats_urls": (nats.config.url,),
        "heartbeat": 0.5,
        "stall_after": 1.0,
        "watchdog_interval": 0.25,
        "publish_timeout": 3.0,
        "grace": 2.0,
    }
    base.update(overrides)
    return NodeSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def node(nats: NatsServer) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """An in-process chat node (Litestar's test client), ready."""
    with TestClient(create_app(node_settings(nats))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="node ready")
        yield client


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
        return self._start(Service(name, args, port, self._workdir / f"{name}.log"), wait)

    def archiver(self) -> Service:
        port = free_port()
        args = ["archiver", "--nats-url", self._nats.config.url, "--port", str(port)]
        return self._start(Service("archiver", args, port, self._workdir / "archiver.log"), True)

    def _start(self, service: Service, wait: bool) -> Service:
        service.start()
        self.started.append(service)
        if wait:
            wait_until(service.ready, timeout=30, what=f"{service.name} ready")
        return service

    def stop_all(self) -> None:
        for service in self.started:
            service.stop(10)


@pytest.fixture
def procs(nats: NatsServer, tmp_path: Path) -> Iterator[NodeProcs]:
    started = NodeProcs(nats, tmp_path)
    yield started
    started.stop_all()
