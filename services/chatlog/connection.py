"""One nats-py connection and the boundary where every nats-py error is translated.

Nothing outside this package sees a nats-py type or exception.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from chatlog.errors import LogRejected, LogUnavailable
from chatlog.settings import LogSettings

log = logging.getLogger("chatlog")

NATS_DOWN = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    OSError,
)


@asynccontextmanager
async def boundary(what: str) -> AsyncIterator[None]:
    """Translate whatever nats-py raises inside into LogUnavailable or LogRejected."""
    try:
        yield
    except NATS_DOWN as exc:
        raise LogUnavailable(f"{what}: NATS unavailable ({exc!r})") from exc
    except nats.js.errors.APIError as exc:
        raise LogRejected(f"{what}: {exc.description or exc!r} (code {exc.err_code})") from exc
    except TimeoutError as exc:
        raise LogUnavailable(f"{what}: timed out") from exc


class Connection:
    """A connected nats-py client with its JetStream contexts. Reconnects by itself for
    ever once connected; ``events`` counts its reconnections."""

    def __init__(self, nc: Client, settings: LogSettings) -> None:
        self.nc = nc
        self.settings = settings
        self.api_timeout = min(settings.api_timeout, settings.publish_timeout)
        # Management calls (stream info, consumer create, direct get) get a short timeout:
        # while a stream elects a new leader they hang, and a watchdog stuck for the whole
        # publish timeout would delay recovery by that much.
        self.js: JetStreamContext = nc.jetstream(timeout=self.api_timeout)
        # Large bodies (snapshot chunks) get the publish timeout.
        self.js_slow: JetStreamContext = nc.jetstream(timeout=settings.publish_timeout)
        self.reconnects = 0

    @classmethod
    async def open(cls, settings: LogSettings, name: str) -> "Connection":
        """Connect once (LogUnavailable if no server answers); reconnect for ever after."""
        conn: Connection | None = None

        async def on_error(exc: Exception) -> None:
            log.warning("nats error: %s", exc)

        async def on_disconnected() -> None:
            log.warning("nats disconnected")

        async def on_reconnected() -> None:
            log.warning("nats reconnected")
            if conn is not None:
                conn.reconnects += 1

        try:
            nc = await nats.connect(
                list(settings.nats_urls),
                name=name,
                connect_timeout=2,
                allow_reconnect=True,
                # Bounded for the first connect, so a caller learns that NATS is down...
                max_reconnect_attempts=1,
                reconnect_time_wait=0.25,
                # A server that stops answering (paused, partitioned) is left after ~6 s.
                ping_interval=2,
                max_outstanding_pings=3,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
        except (*NATS_DOWN, nats.errors.NoServersError) as exc:
            urls = ",".join(settings.nats_urls)
            raise LogUnavailable(f"cannot connect to NATS at {urls}: {exc!r}") from exc
        # ...and unbounded once connected: a running service never gives up on NATS.
        nc.options["max_reconnect_attempts"] = -1
        conn = cls(nc, settings)
        return conn

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (*NATS_DOWN, nats.errors.Error):
                await self.nc.close()
