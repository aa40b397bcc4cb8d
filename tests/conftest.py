"""Fixtures: real nats-server processes on free ports with temporary stores; never mocks.
Helpers that test modules import are in ``tests/support.py``."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from chat.app import create_app
from chat_cluster.natsserver import NatsServer, checked_binary
from chatlog import ChatLog
from tests.support import NodeProcs, log_settings, node_settings, start_server, wait_until


@pytest.fixture(scope="session")
def nats_bin() -> Path:
    path, _ = checked_binary()
    return path


@pytest.fixture
def nats(nats_bin: Path, tmp_path: Path) -> Iterator[NatsServer]:
    server = start_server(nats_bin, tmp_path)
    yield server
    server.kill()


@pytest.fixture
async def chatlog(nats: NatsServer) -> AsyncIterator[ChatLog]:
    log = await ChatLog.open(log_settings(nats), "test")
    await log.ensure_stream()
    yield log
    await log.close()


@pytest.fixture
def node(nats: NatsServer) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """An in-process chat node (Litestar's test client), ready."""
    with TestClient(create_app(node_settings(nats))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="node ready")
        yield client


@pytest.fixture
def procs(nats: NatsServer, tmp_path: Path) -> Iterator[NodeProcs]:
    started = NodeProcs(nats, tmp_path)
    yield started
    started.stop_all()
