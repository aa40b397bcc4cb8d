"""The chat node's app factory: creates the node's parts once and wires them together."""

import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar, Router
from litestar.datastructures import State

import telemetry
from auth.web import cors
from chat.api import HTTP_ROUTES, ws_endpoint
from chat.metrics import NodeMetrics
from chat.node import Node
from chat.page import PAGE_ROUTES
from chat.settings import NodeSettings
from servicekit.problems import EXCEPTION_HANDLERS
from servicekit.workers import Worker
from telemetry import Telemetry
from telemetry.http import metrics, middleware

log = logging.getLogger("chat.app")


def create_app(
    settings: NodeSettings, telemetry_: Telemetry | None = None, worker: Worker | None = None
) -> Litestar:
    """``telemetry_`` comes from the entry point (``OTEL_*`` read there); by default
    metrics are only served on /metrics and nothing is exported. ``worker``: one of
    ``--workers`` (servicekit.workers)."""
    tele = telemetry_ or telemetry.start("chat-node", settings.node_id, {})
    meter = tele.meter("chat")
    node = Node.create(settings, meter, tele.tracing, worker)
    NodeMetrics(meter, node)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await node.start()
        log.info("node %s starting", settings.node_id)
        try:
            yield
        finally:
            await node.stop()
            tele.shutdown()
            log.info("node %s stopped", settings.node_id)

    return Litestar(
        route_handlers=[
            # HTTP metrics and spans wrap the HTTP routes only: a wrapper around the
            # WebSocket route would stay on every open socket's stack (0.6 KB each, measured).
            Router("/", route_handlers=[*HTTP_ROUTES, metrics], middleware=middleware(tele)),
            *PAGE_ROUTES,
            ws_endpoint,
        ],
        state=State({"node": node, "telemetry": tele, "worker": worker}),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=cors(settings.auth),
        openapi_config=None,  # no schema served: nothing to read before a token
        logging_config=None,
        debug=False,
    )
