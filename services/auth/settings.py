"""How services verify user tokens: every auth default, flag and environment variable."""

from dataclasses import dataclass

from options import non_negative_float, positive_float, setting


def auth_mode(raw: str) -> bool:
    """``AUTH=jwt`` (on) or ``AUTH=none`` (anonymous, explicit)."""
    lowered = raw.strip().lower()
    if lowered in ("jwt", "on", "true", "1", "yes"):
        return True
    if lowered in ("none", "off", "false", "0", "no"):
        return False
    raise ValueError("must be jwt or none")


def origins(raw: str) -> tuple[str, ...]:
    out = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for origin in out:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"{origin!r} is not an origin such as https://chat.example.com")
    return out


@dataclass(frozen=True)
class AuthSettings:
    enabled: bool = setting(
        True, flag="--auth", env="AUTH", parse=auth_mode,
        help="verify user tokens (jwt); --no-auth or AUTH=none lets anyone in as anyone "
        "(today's anonymous mode: a warning is logged at start)",
        shown="jwt",
    )  # fmt: skip
    jwks_file: str | None = setting(
        None, flag="--jwks-file", env="JWKS_FILE",
        help="a JWKS (JSON Web Key Set) file of the public keys tokens are signed with "
        "(EdDSA, ES256, RS256...); re-read when it changes, so keys rotate without a restart",
    )  # fmt: skip
    jwks_url: str | None = setting(
        None, flag="--jwks-url", env="JWKS_URL",
        help="a JWKS URL (an identity provider's); fetched at start, refreshed every "
        "--jwks-refresh seconds and at once (at most every 10 s) for an unknown key id",
    )  # fmt: skip
    hs256_secret: str | None = setting(
        None, flag=None, env="AUTH_HS256_SECRET", secret=True,
        help="a shared secret (at least 32 bytes) for HS256 tokens, as an option beside "
        "or instead of a JWKS; HS256 is never accepted with a JWKS key",
        shown="unset",
    )  # fmt: skip
    audience: str | None = setting(
        None, flag="--auth-audience", env="AUTH_AUDIENCE",
        help="when set, tokens must carry this aud",
    )  # fmt: skip
    issuer: str | None = setting(
        None, flag="--auth-issuer", env="AUTH_ISSUER", help="when set, tokens must carry this iss"
    )
    leeway: float = setting(
        5.0, flag="--auth-leeway", env="AUTH_LEEWAY", parse=non_negative_float,
        help="seconds of clock skew allowed on exp, nbf and iat",
    )  # fmt: skip
    max_lifetime: float = setting(
        86400.0, flag="--auth-max-lifetime", env="AUTH_MAX_LIFETIME", parse=positive_float,
        help="seconds a token may still be valid when presented; longer-lived ones are "
        "refused (a leaked key's tokens must not outlive its rotation by much)",
    )  # fmt: skip
    jwks_refresh: float = setting(
        300.0, flag="--jwks-refresh", env="JWKS_REFRESH", parse=positive_float,
        help="seconds between re-reads of the JWKS file or URL",
    )  # fmt: skip
    allowed_origins: tuple[str, ...] = setting(
        (), flag="--allowed-origins", env="ALLOWED_ORIGINS", parse=origins,
        help="comma-separated origins (https://chat.example.com) whose pages may call this "
        "service (CORS) and open WebSockets; a page's own origin always may; * allows any",
        shown="none (same origin only)",
    )  # fmt: skip
    ws_auth_timeout: float = setting(
        5.0, flag="--ws-auth-timeout", env="WS_AUTH_TIMEOUT", parse=positive_float,
        help="seconds a WebSocket without a token in its handshake has to send "
        '{"op":"auth"} before it is closed with 4001',
    )  # fmt: skip

    # Tunables without a flag.
    cache_size: int = 10_000
    """Verified tokens kept (until they expire), so a repeated token costs a dict lookup."""
    refresh_ahead: float = 30.0
    """A WebSocket is asked for a new token this long before its token expires."""
    unknown_kid_every: float = 10.0
    """An unknown key id re-reads the JWKS at most this often."""
    policy_cache: float = 1.0
    """The archiver's grants are at most this old (nodes watch them live)."""
