"""The archiver's app factory."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State

from archiver.api import ROUTES
from archiver.reader import Reader
from archiver.settings import ArchiverSettings
from servicekit.http import EXCEPTION_HANDLERS


def create_app(settings: ArchiverSettings) -> Litestar:
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

    return Litestar(
        route_handlers=ROUTES,
        state=State({"settings": settings, "reader": reader}),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,
    )
