"""The chat node's app factory: wires settings, replica, follower and routes."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar, Router
from litestar.datastructures import State

import telemetry
from chat.api import HTTP_ROUTES, ws_endpoint
from chat.follower import Follower
from chat.metrics import NodeMetrics
from chat.replica import Replica
from chat.settings import NodeSettings
from chat.snapshot import Saver
from chat.writes import Writer
from chat.ws import Hub
from servicekit.http import EXCEPTION_HANDLERS
from telemetry import Telemetry
from telemetry.http import metrics, middleware

log = logging.getLogger("chat.app")


def _report_end(task: "asyncio.Task[None]") -> None:
    # The follower only ends when cancelled; anything else leaves a frozen replica.
    if not task.cancelled() and task.exception() is not None:
        log.critical(
            "the follower stopped: %r; this node no longer follows the log", task.exception()
        )


def create_app(settings: NodeSettings, telemetry_: Telemetry | None = None) -> Litestar:
    """``telemetry_`` comes from the entry point (``OTEL_*`` read there); by default
    metrics are only served on /metrics and nothing is exported."""
    tele = telemetry_ or telemetry.start("chat-node", settings.node_id, {})
    replica = Replica(settings.stream.max_text, settings.keep_per_channel)
    follower = Follower(settings, replica)
    hub = Hub()
    node_metrics = NodeMetrics(tele.meter("chat"), replica, follower, hub)
    state = State(
        {
            "settings": settings,
            "replica": replica,
            "follower": follower,
            "writer": Writer(follower, replica, node_metrics, tele.tracing),
            "hub": hub,
            "telemetry": tele,
        }
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        task = asyncio.create_task(follower.run(), name=f"follower {settings.node_id}")
        task.add_done_callback(_report_end)
        saver = None
        if settings.snapshot_every > 0 and settings.keep_per_channel is None:
            saver = asyncio.create_task(
                Saver(
                    lambda: follower.chatlog,
                    lambda: follower.ready,
                    replica,
                    settings.snapshot_every,
                ).run(settings.snapshot_interval),
                name="snapshot saver",
            )
        log.info("node %s starting", settings.node_id)
        try:
            yield
        finally:
            await hub.drain(settings.grace)
            for running in (task, saver):
                if running is not None:
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running
            if follower.chatlog is not None:
                await follower.chatlog.close()
            tele.shutdown()
            log.info("node %s stopped", settings.node_id)

    return Litestar(
        route_handlers=[
            # HTTP metrics and spans wrap the HTTP routes only: a wrapper around the
            # WebSocket route would stay on every open socket's stack (0.6 KB each, measured).
            Router("/", route_handlers=[*HTTP_ROUTES, metrics], middleware=middleware(tele)),
            ws_endpoint,
        ],
        state=state,
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,
        debug=False,
    )
