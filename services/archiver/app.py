"""The archiver's app factory."""

import contextlib
from collections.abc import AsyncIterator, Iterable

from litestar import Litestar
from litestar.datastructures import State
from opentelemetry.metrics import CallbackOptions, Observation

import telemetry
from archiver.api import ROUTES
from archiver.reader import Reader
from archiver.settings import ArchiverSettings
from auth import Gate
from auth.web import cors
from chatlog import ChatLog
from chatlog.roles import ARCHIVER
from servicekit.connections import Guard
from servicekit.problems import EXCEPTION_HANDLERS
from servicekit.tasks import Background
from telemetry import Telemetry
from telemetry.http import metrics, middleware


def create_app(settings: ArchiverSettings, telemetry_: Telemetry | None = None) -> Litestar:
    tele = telemetry_ or telemetry.start("archiver", f"{settings.host}:{settings.port}", {})
    chatlog = ChatLog(settings.log, name="archiver", role=ARCHIVER)
    gate = Gate(settings.auth)  # ConfigError without keys, unless --no-auth
    reader = Reader(chatlog, settings.export_page, gate)
    background = Background()
    guard = Guard(settings.connections)

    def refused(_: CallbackOptions) -> Iterable[Observation]:
        for reason, count in guard.refused.items():
            yield Observation(count, {"reason": reason})

    tele.meter("archiver").create_observable_counter(
        "archiver.limits.refused", [refused], "{request}",
        "Connections refused by a limit, by reason: connections (503), header_timeout (408), "
        "read_timeout (closed)",
    )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await gate.start()  # a JWKS that cannot be read stops the archiver here
        background.start("archiver startup", reader.run())
        if gate.verifier is not None and gate.verifier.has_remote_keys:
            background.start("token keys", gate.verifier.refresh_forever())
        try:
            yield
        finally:
            await background.stop()
            await chatlog.close()
            tele.shutdown()

    return Litestar(
        route_handlers=[*ROUTES, metrics],
        middleware=middleware(tele),
        state=State({"settings": settings, "reader": reader, "telemetry": tele, "guard": guard}),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=cors(settings.auth),
        openapi_config=None,  # no schema served: nothing to read before a token
        logging_config=None,
    )
