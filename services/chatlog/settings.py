"""Where the log is, who this service is to NATS, and how long its calls may take."""

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from options import setting

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
_SCHEMES = ("nats://", "tls://")
_SEED = re.compile(rb"\bSU[A-Z2-7]{56}\b")


def nats_urls(raw: str) -> tuple[str, ...]:
    """``NATS_URL``: one URL or a comma-separated list of them."""
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    if not urls:
        raise ValueError("no NATS URL given")
    for url in urls:
        if not url.startswith(_SCHEMES):
            raise ValueError(f"NATS URL {url!r} must start with nats:// or tls://")
    return urls


def readable_file(raw: str) -> str:
    path = Path(raw)
    if not path.is_file():
        raise ValueError("no such file")
    return str(path)


@dataclass(frozen=True)
class LogSettings:
    nats_urls: tuple[str, ...] = setting(
        (DEFAULT_NATS_URL,),
        flag="--nats-url",
        env="NATS_URL",
        parse=nats_urls,
        help="NATS server URL, or a comma-separated list of them",
    )
    creds: str | None = setting(
        None,
        flag="--nats-creds",
        env="NATS_CREDS",
        parse=readable_file,
        help="file with this service's NATS credentials: an nkey seed (*.nk) or a .creds file",
        shown="none",
    )
    user: str | None = setting(
        None,
        flag="--nats-user",
        env="NATS_USER",
        help="NATS user name, with NATS_PASSWORD (instead of NATS_CREDS)",
        shown="none",
    )
    password: str | None = setting(
        None,
        flag=None,
        env="NATS_PASSWORD",
        help="NATS password for NATS_USER; from the environment only, never a flag",
        shown="none",
        secret=True,
    )
    tls_ca: str | None = setting(
        None,
        flag="--nats-tls-ca",
        env="NATS_TLS_CA",
        parse=readable_file,
        help="CA certificate (PEM) that NATS servers' certificates must chain to; "
        "setting it turns TLS on",
        shown="none: no TLS",
    )
    tls_cert: str | None = setting(
        None,
        flag="--nats-tls-cert",
        env="NATS_TLS_CERT",
        parse=readable_file,
        help="client certificate (PEM), for servers that verify clients",
        shown="none",
    )
    tls_key: str | None = setting(
        None,
        flag="--nats-tls-key",
        env="NATS_TLS_KEY",
        parse=readable_file,
        help="the client certificate's private key (PEM)",
        shown="none",
    )
    publish_timeout: float = 5.0
    """From publish to PubAck; a send that takes longer answers 503 (nothing promised)."""
    api_timeout: float = 2.0
    """Stream info, consumer creation, direct gets: short, so a watchdog recovers quickly
    while a stream elects a new leader (those calls hang meanwhile)."""

    @property
    def has_credentials(self) -> bool:
        return self.creds is not None or self.user is not None

    def signing_key(self) -> bytes | None:
        """A key derived from this service's secret (its nkey seed or password), so that
        every holder of the same credentials (all nodes) derives the same key and no
        one else can: what snapshots are signed with. None without a secret."""
        secret: bytes | None = None
        if self.creds is not None:
            found = _SEED.search(Path(self.creds).read_bytes())
            secret = found.group(0) if found else None
        elif self.password:
            secret = self.password.encode()
        if secret is None:
            return None
        return hmac.new(secret, b"chat-cluster snapshot signing key v1", hashlib.sha256).digest()

    def dedupe_key(self) -> bytes:
        """The key of the log's duplicate ids (:meth:`chatlog.ChatLog.dedupe_id`), derived
        like :meth:`signing_key`; without a secret, a fixed one (anonymous NATS, where
        anyone may publish anything anyway)."""
        secret = self.signing_key() or b"chat-cluster without NATS credentials"
        return hmac.new(secret, b"chat-cluster duplicate ids v1", hashlib.sha256).digest()
