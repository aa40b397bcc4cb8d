"""The gate every HTTP request and WebSocket passes: who is asking (a bearer token), from
which page (its Origin), and whether they may read or send on a channel."""

import asyncio
import logging
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

from litestar.config.cors import CORSConfig

from auth.grants import Access, Grants
from auth.identity import ANONYMOUS, Identity
from auth.settings import AuthSettings
from auth.tokens import Verifier
from servicekit.errors import ServiceError, forbidden, unauthorized

log = logging.getLogger("auth")


def handshake_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The few headers the gate reads, straight from the ASGI scope: parsing them all
    into Litestar's cached Headers would keep them for the socket's life (memory per
    idle socket is a benchmark figure)."""
    wanted = (b"origin", b"host", b"authorization")
    return {name.decode(): value.decode("latin-1") for name, value in raw if name in wanted}


def query_token(query: bytes) -> str | None:
    """``?token=`` of a WebSocket URL, without parsing (and keeping) the whole query."""
    if b"token=" not in query:
        return None
    values = parse_qs(query.decode("latin-1")).get("token")
    return values[0] if values else None


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class Gate:
    def __init__(self, settings: AuthSettings, grants: Grants | None = None) -> None:
        self.settings = settings
        self.verifier = Verifier(settings) if settings.enabled else None
        self.grants = grants or Grants()
        self.access = Access(self.grants)
        self._any_origin = "*" in settings.allowed_origins
        self._origins = frozenset(settings.allowed_origins)

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    async def start(self) -> None:
        """Load the keys (a bad JWKS stops the service here, with its reason)."""
        if self.verifier is None:
            log.warning(
                "AUTH=none: anyone who can reach this service may read every channel and "
                "send under any name (anonymous mode, --no-auth)"
            )
            return
        if self.verifier.has_remote_keys:
            await asyncio.to_thread(self.verifier.load)

    async def identify(self, headers: Mapping[str, str], token: str | None = None) -> Identity:
        """The caller, from ``Authorization: Bearer`` (or ``token``, the WebSocket's own);
        401 without one when auth is on."""
        if self.verifier is None:
            return ANONYMOUS
        token = token or bearer(headers)
        if token is None:
            raise unauthorized("no token: send 'Authorization: Bearer <token>'")
        return await self.verifier.verify(token)

    def origin_allowed(self, headers: Mapping[str, str]) -> bool:
        """A request with no Origin is not from a browser page; a page may always call its
        own origin; any other page only when it is in ``ALLOWED_ORIGINS``."""
        origin = headers.get("origin")
        if origin is None or self._any_origin:
            return True
        if origin.rstrip("/") in self._origins:
            return True
        return urlsplit(origin).netloc == headers.get("host", "")

    def check_origin(self, headers: Mapping[str, str]) -> None:
        if not self.origin_allowed(headers):
            raise ServiceError(
                403,
                "origin_not_allowed",
                f"pages from {headers.get('origin')} may not call this service (ALLOWED_ORIGINS)",
            )

    def check_read(self, who: Identity, channel: str) -> None:
        if not self.access.may_read(who, channel):
            raise forbidden(f"{who.user} may not read channel {channel!r}")

    def check_send(self, who: Identity, channel: str) -> None:
        if not self.access.may_send(who, channel):
            raise forbidden(f"{who.user} may not send to channel {channel!r}")

    def check_admin(self, who: Identity) -> None:
        if not who.admin:
            raise forbidden(f"{who.user} is not an admin (the token's chat.admin claim)")


def cors(settings: AuthSettings) -> CORSConfig | None:
    """CORS for the pages in ``ALLOWED_ORIGINS``; none at all by default (a browser then
    lets no other site's script read our answers)."""
    if not settings.allowed_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.allowed_origins),
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["authorization", "content-type"],
        max_age=600,
    )
