"""One nats-py connection and the boundary where every nats-py error is translated.

Nothing outside this package sees a nats-py type or exception.
"""

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from chatlog.errors import Forbidden, LogRejected, LogUnavailable
from chatlog.roles import api_prefix, inbox_prefix
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
async def boundary(what: str, conn: "Connection | None" = None) -> AsyncIterator[None]:
    """Translate whatever nats-py raises inside into LogUnavailable or LogRejected; a
    request that went unanswered because NATS refused this role the subject (the server
    says so asynchronously, the request then times out) becomes Forbidden."""
    violations = conn.violations if conn is not None else 0
    try:
        yield
    except NATS_DOWN as exc:
        if conn is not None and conn.violations > violations:
            raise Forbidden(f"{what}: {conn.last_violation}") from exc
        raise LogUnavailable(f"{what}: NATS unavailable ({exc!r})") from exc
    except nats.js.errors.APIError as exc:
        raise LogRejected(f"{what}: {exc.description or exc!r} (code {exc.err_code})") from exc
    except TimeoutError as exc:
        raise LogUnavailable(f"{what}: timed out") from exc


class Connection:
    """A connected nats-py client with its JetStream contexts. Reconnects by itself for
    ever once connected; ``events`` counts its reconnections."""

    def __init__(self, nc: Client, settings: LogSettings, role: str) -> None:
        self.nc = nc
        self.settings = settings
        self.api = api_prefix(role)
        """The JetStream API as this role reaches it (imported under another name by a
        role whose account does not hold the streams)."""
        self.api_timeout = min(settings.api_timeout, settings.publish_timeout)
        # Management calls (stream info, consumer create, direct get) get a short timeout:
        # while a stream elects a new leader they hang, and a watchdog stuck for the whole
        # publish timeout would delay recovery by that much.
        self.js: JetStreamContext = nc.jetstream(prefix=self.api, timeout=self.api_timeout)
        # Large bodies (snapshot chunks) get the publish timeout.
        self.js_slow: JetStreamContext = nc.jetstream(
            prefix=self.api, timeout=settings.publish_timeout
        )
        self.reconnects = 0
        self.closing = False
        self.violations = 0
        self.last_violation = ""

    @classmethod
    async def open(cls, settings: LogSettings, name: str, role: str) -> "Connection":
        """Connect once (LogUnavailable if no server answers); reconnect for ever after."""
        conn: Connection | None = None
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))
            log.warning("nats error: %s", exc)
            if conn is not None and "permissions violation" in str(exc).lower():
                conn.violations += 1
                conn.last_violation = str(exc)

        async def on_disconnected() -> None:
            if conn is not None and conn.closing:
                return  # our own close (a CLI command ending, a service stopping)
            log.warning("nats disconnected")

        async def on_reconnected() -> None:
            log.warning("nats reconnected")
            if conn is not None:
                conn.reconnects += 1

        try:
            # Bounded as a whole too: a server whose TLS certificate we do not trust makes
            # nats-py try again and again rather than fail.
            async with asyncio.timeout(5.0 + 3.0 * len(settings.nats_urls)):
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
                    # Replies and deliveries come back under the role's own prefix, the only
                    # one its NATS permissions let it subscribe to.
                    inbox_prefix=inbox_prefix(role),
                    **_credentials(settings),
                )
        except (*NATS_DOWN, nats.errors.Error, TimeoutError) as exc:
            urls = ",".join(settings.nats_urls)
            said = f" ({errors[-1]})" if errors else ""
            if any("authorization violation" in e.lower() for e in errors):
                # No wait makes NATS know these credentials: a one-shot command stops now
                # (a service retries for ever, saying so, as with NATS down).
                raise Forbidden(f"NATS at {urls} refused the credentials{said}") from exc
            raise LogUnavailable(f"cannot connect to NATS at {urls}: {exc!r}{said}") from exc
        # ...and unbounded once connected: a running service never gives up on NATS.
        nc.options["max_reconnect_attempts"] = -1
        conn = cls(nc, settings, role)
        return conn

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        self.closing = True
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (*NATS_DOWN, nats.errors.Error):
                await self.nc.close()


def _credentials(settings: LogSettings) -> dict[str, Any]:
    """nats-py's options for who we are and how the connection is protected."""
    options: dict[str, Any] = {}
    if settings.creds is not None:
        if settings.creds.endswith(".creds"):
            options["user_credentials"] = settings.creds
        else:
            options["nkeys_seed"] = settings.creds
    elif settings.user is not None:
        options["user"] = settings.user
        options["password"] = settings.password or ""
    if settings.tls_ca is not None:
        context = ssl.create_default_context(cafile=settings.tls_ca)
        if settings.tls_cert is not None:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        options["tls"] = context
    return options
