"""Token verification: PyJWT does the cryptography; here are the rules around it.

- The algorithm comes from the key, never from the token alone: a JWKS key is used
  only with its own algorithm, and HS256 only with the configured shared secret.
  ``alg: none``, and an HS256 token signed with a public key (algorithm confusion),
  therefore never verify.
- A key id we do not know re-reads the key set (at most every ``unknown_kid_every``
  seconds), so a new signing key is picked up without a restart; a key that left the
  set drops every cached token.
- A verified token is cached until it expires: a client that reconnects, or sends
  REST requests, with the same token pays one dict lookup.
"""

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import msgspec

from auth.identity import Claims, Identity
from auth.settings import AuthSettings
from options import ConfigError
from servicekit.errors import unauthorized

log = logging.getLogger("auth")

ASYMMETRIC = ("EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384")
HS256 = "HS256"
MIN_SECRET = 32
MAX_TOKEN = 8192
"""Longer tokens are refused before they are parsed."""


class KeySet:
    """One reading of the JWKS: keys by id, each with the one algorithm it verifies."""

    def __init__(self, keys: list[tuple[str | None, str, Any]], version: str) -> None:
        self.keys = keys
        self.version = version
        self.by_kid = {kid: (alg, key) for kid, alg, key in keys if kid is not None}

    @classmethod
    def parse(cls, raw: bytes, where: str) -> "KeySet":
        try:
            data = json.loads(raw)
            found = jwt.PyJWKSet.from_dict(data)
        except (ValueError, jwt.PyJWKSetError, jwt.PyJWKError) as exc:
            raise ConfigError(f"{where}: not a usable JWKS ({exc})") from exc
        keys = []
        for jwk in found.keys:
            alg = jwk.algorithm_name
            if alg not in ASYMMETRIC or jwk.public_key_use not in (None, "sig"):
                log.warning("%s: key %s (%s) skipped: not a signing key", where, jwk.key_id, alg)
                continue
            keys.append((jwk.key_id, alg, jwk.key))
        if not keys:
            raise ConfigError(f"{where}: no signing keys ({', '.join(ASYMMETRIC)})")
        return cls(keys, raw.decode(errors="replace"))


def _fetch(settings: AuthSettings) -> KeySet | None:
    if settings.jwks_file:
        path = Path(settings.jwks_file)
        try:
            return KeySet.parse(path.read_bytes(), str(path))
        except OSError as exc:
            raise ConfigError(f"JWKS_FILE {path}: {exc.strerror or exc}") from exc
    if settings.jwks_url:
        try:
            with urllib.request.urlopen(settings.jwks_url, timeout=5) as resp:
                return KeySet.parse(resp.read(), settings.jwks_url)
        except OSError as exc:
            raise ConfigError(f"JWKS_URL {settings.jwks_url}: {exc}") from exc
    return None


class Verifier:
    """Turns a bearer token into an :class:`Identity`, or raises 401 naming the reason."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        secret = settings.hs256_secret
        if self.enabled and not (settings.jwks_file or settings.jwks_url or secret):
            raise ConfigError(
                "no token keys: give JWKS_FILE (--jwks-file), JWKS_URL (--jwks-url) or "
                "AUTH_HS256_SECRET; or run with --no-auth (AUTH=none) to let anyone in "
                "under any name"
            )
        if secret is not None and len(secret.encode()) < MIN_SECRET:
            raise ConfigError(f"AUTH_HS256_SECRET must be at least {MIN_SECRET} bytes")
        self._secret = secret.encode() if secret else None
        self._keys: KeySet | None = None
        self._cache: dict[str, Identity] = {}
        self._last_load = 0.0
        self.verified = 0
        self.refused = 0
        self.cache_hits = 0
        self.on_change: list[Callable[[], None]] = []
        """Called (on the event loop) after the key set changed: open sockets re-verify."""

    def load(self) -> bool:
        """Read the key set (blocking I/O: call in a thread from the event loop). True when
        it changed. ConfigError when it cannot be read or used."""
        self._last_load = time.monotonic()
        keys = _fetch(self.settings)
        if keys is None or (self._keys is not None and keys.version == self._keys.version):
            return False
        if self._keys is not None:
            log.info("token keys changed: %d key(s)", len(keys.keys))
        self._keys = keys
        self._cache.clear()  # a removed key must not live on in the cache
        return True

    @property
    def has_remote_keys(self) -> bool:
        return bool(self.settings.jwks_file or self.settings.jwks_url)

    def _key_for(self, alg: str, kid: str | None) -> Any:
        if alg == HS256:
            if self._secret is None:
                raise unauthorized("HS256 tokens are not accepted here (no shared secret)")
            return self._secret
        keys = self._keys
        if keys is None:
            return None
        if kid is not None:
            found = keys.by_kid.get(kid)
            if found is None:
                return None
            if found[0] != alg:
                raise unauthorized(f"key {kid!r} verifies {found[0]}, not {alg}")
            return found[1]
        fits = [key for _, key_alg, key in keys.keys if key_alg == alg]
        if len(fits) != 1:
            raise unauthorized(f"the token names no key (kid) and {len(fits)} {alg} keys fit")
        return fits[0]

    async def verify(self, token: str) -> Identity:
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires is not None and cached.expires + self.settings.leeway > time.time():
                self.cache_hits += 1
                return cached
            del self._cache[token]
        try:
            identity = await self._verify(token)
        except Exception:
            self.refused += 1
            raise
        self.verified += 1
        identity.token = token
        if len(self._cache) >= self.settings.cache_size:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[token] = identity
        return identity

    async def _verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN:
            raise unauthorized(f"the token is longer than {MAX_TOKEN} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise unauthorized("the token is not a JWT") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in (*ASYMMETRIC, HS256):
            accepted = ", ".join((*ASYMMETRIC, HS256))
            raise unauthorized(f"alg {alg!r} is not accepted (one of {accepted})")
        if kid is not None and not isinstance(kid, str):
            raise unauthorized("kid must be a string")
        key = self._key_for(alg, kid)
        if key is None and self.has_remote_keys and self._may_reload():
            await self.reload()
            key = self._key_for(alg, kid)
        if key is None:
            raise unauthorized(f"unknown key id {(kid[:64] if kid else kid)!r}")
        settings = self.settings
        try:
            raw = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={"require": ["exp", "sub"], "verify_aud": settings.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise unauthorized("the token is not valid yet (nbf or iat in the future)") from exc
        except jwt.InvalidAudienceError as exc:
            raise unauthorized(f"the token is not for this audience ({exc})") from exc
        except jwt.InvalidIssuerError as exc:
            raise unauthorized("the token is from another issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise unauthorized("the token's signature does not verify") from exc
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"the token is not acceptable: {exc}") from exc
        try:
            claims = msgspec.convert(raw, Claims)
            lifetime = claims.exp - time.time()
            if lifetime > settings.max_lifetime:
                raise ValueError(
                    f"it is valid for {lifetime:.0f}s, more than the {settings.max_lifetime:.0f}s "
                    "accepted (AUTH_MAX_LIFETIME)"
                )
            return Identity.of(claims)
        except (msgspec.ValidationError, ValueError) as exc:
            raise unauthorized(f"the token's claims: {exc}") from exc

    def _may_reload(self) -> bool:
        return time.monotonic() - self._last_load >= self.settings.unknown_kid_every

    def _reload_quietly(self) -> bool:
        try:
            return self.load()
        except ConfigError as exc:
            log.warning("token keys not re-read: %s", exc)
            return False

    async def reload(self) -> None:
        """Re-read the key set; tell ``on_change`` when it changed."""
        if await asyncio.to_thread(self._reload_quietly):
            for callback in self.on_change:
                callback()

    async def refresh_forever(self) -> None:
        """Re-read the key set every ``jwks_refresh`` seconds (a background task)."""
        while True:
            await asyncio.sleep(self.settings.jwks_refresh)
            await self.reload()
