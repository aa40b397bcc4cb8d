"""A local signing key: what ``chat-cluster up`` generates and ``chat-cluster token`` signs
with. Production tokens come from your identity provider; this is for local clusters,
tests and tools."""

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

SIGNING_KEY = "signing-key.pem"
JWKS = "jwks.json"


def _kid(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")


def jwks_of(private: Ed25519PrivateKey) -> dict[str, Any]:
    key: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    key.update(kid=_kid(private), alg="EdDSA", use="sig")
    return {"keys": [key]}


def generate(directory: Path) -> Path:
    """An Ed25519 key pair in ``directory`` (the private key 0600), unless one is there."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / SIGNING_KEY
    if not path.exists():
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    (directory / JWKS).write_text(json.dumps(jwks_of(load(path)), indent=2) + "\n")
    return path


def load(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def mint(
    private: Ed25519PrivateKey,
    user: str,
    *,
    ttl: float = 3600.0,
    read: tuple[str, ...] = (),
    send: tuple[str, ...] = (),
    admin: bool = False,
    name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A signed token for ``user`` with these channel patterns, valid for ``ttl`` seconds."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + int(ttl)}
    chat: dict[str, Any] = {}
    if read:
        chat["read"] = list(read)
    if send:
        chat["send"] = list(send)
    if admin:
        chat["admin"] = True
    if chat:
        claims["chat"] = chat
    if name:
        claims["name"] = name
    claims.update(extra or {})
    return jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": _kid(private)})


def duration(raw: str) -> float:
    """``30s``, ``15m``, ``1h``, ``7d`` or plain seconds."""
    text = raw.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except (ValueError, KeyError):
        raise ValueError("must be a duration such as 30s, 15m, 1h or 7d") from None
    if value <= 0:
        raise ValueError("must be > 0")
    return value
