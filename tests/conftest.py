"""Fixtures: real nats-server processes on free ports with temporary stores, with NATS
credentials on as in production; never mocks. Helpers that test modules import are in
``tests/support.py``."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from chat.app import create_app
from chat_cluster.credentials import Credentials
from chat_cluster.natsserver import NatsServer, checked_binary
from chatlog import ChatLog
from chatlog.roles import ADMIN, NODE, PUBLISHER
from tests.support import (
    NodeProcs,
    client,
    ensure_streams,
    node_settings,
    open_log,
    start_server,
    wait_until,
)


@pytest.fixture(scope="session")
def nats_bin() -> Path:
    path, _ = checked_binary()
    return path


@pytest.fixture(scope="session")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """One nkey per role, as `chat-cluster up` makes them (generated once per session)."""
    return Credentials.ensure(tmp_path_factory.mktemp("creds"))


@pytest.fixture
def bare_nats(nats_bin: Path, tmp_path: Path, creds: Credentials) -> Iterator[NatsServer]:
    """A nats-server with credentials on and no streams yet."""
    server = start_server(nats_bin, tmp_path, creds)
    yield server
    server.kill()


@pytest.fixture
async def nats(bare_nats: NatsServer) -> NatsServer:
    """A nats-server whose streams the admin has created, as `up` and the chart's Job do."""
    await ensure_streams(bare_nats)
    return bare_nats


@pytest.fixture
async def chatlog(nats: NatsServer) -> AsyncIterator[ChatLog]:
    """The log with the node role's credentials: what a chat node may do."""
    log = await open_log(nats, NODE)
    yield log
    await log.close()


@pytest.fixture
async def admin(nats: NatsServer) -> AsyncIterator[ChatLog]:
    log = await open_log(nats, ADMIN)
    yield log
    await log.close()


@pytest.fixture
async def publisher(nats: NatsServer) -> AsyncIterator[ChatLog]:
    """The log as `nats pub` with the publisher role's credentials sees it."""
    log = await open_log(nats, PUBLISHER)
    yield log
    await log.close()


@pytest.fixture
def node(nats: NatsServer) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """An in-process chat node (Litestar's test client), ready."""
    with client(create_app(node_settings(nats))) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, what="node ready")
        yield test_client


@pytest.fixture
def procs(nats: NatsServer, tmp_path: Path) -> Iterator[NodeProcs]:
    started = NodeProcs(nats, tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def procs_bare(bare_nats: NatsServer, tmp_path: Path) -> Iterator[NodeProcs]:
    """Node processes on a server whose streams the test makes itself."""
    started = NodeProcs(bare_nats, tmp_path)
    yield started
    started.stop_all()
