"""The archiver's app factory."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State

import telemetry
from archiver.api import ROUTES
from archiver.reader import Reader
from archiver.settings import ArchiverSettings
from servicekit.http import EXCEPTION_HANDLERS
from telemetry import Telemetry
from telemetry.http import metrics, middleware


def create_app(settings: ArchiverSettings, telemetry_: Telemetry | None = None) -> Litestar:
    tele = telemetry_ or telemetry.start("archiver", f"{settings.host}:{settings.port}", {})
    reader = Reader(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        task = asyncio.create_task(reader.run(), name="archiver connect")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if reader.chatlog is not None:
                await reader.chatlog.close()
            tele.shutdown()

    return Litestar(
        route_handlers=[*ROUTES, metrics],
        middleware=middleware(tele),
        state=State({"settings": settings, "reader": reader, "telemetry": tele}),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,
    )
