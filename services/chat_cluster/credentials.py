"""NATS credentials for a local cluster: one nkey per role, generated once into the data
directory (``creds/<role>.nk``, mode 0600), and the server-side authorization that
goes with them.

A seed file is what ``nats --nkey`` and nats-py's ``nkeys_seed`` read; the server
only ever sees the public keys. Routes between servers get a password of their own
(``creds/route.password``), so no one can join the cluster as a server either.
"""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import nkeys

from chatlog.roles import ROLES

DIR = "creds"


def _write_private(path: Path, data: bytes) -> None:
    # Created with 0600 from the start: never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


@dataclass(frozen=True)
class NatsUser:
    """One user of the server's authorization: by public nkey, or by name and password
    (the Helm chart's users: their passwords reach nats-server from a Secret through
    its environment)."""

    role: str
    nkey: str | None = None
    name: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class Credentials:
    directory: Path

    @classmethod
    def ensure(cls, data_dir: Path) -> "Credentials":
        """The credentials in ``data_dir``, generated where missing."""
        directory = data_dir / DIR
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        for role in ROLES:
            path = directory / f"{role}.nk"
            if not path.exists():
                _write_private(path, nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        route = directory / "route.password"
        if not route.exists():
            _write_private(route, secrets.token_urlsafe(24).encode())
        return cls(directory)

    def path(self, role: str) -> Path:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        return self.directory / f"{role}.nk"

    def public_key(self, role: str) -> str:
        seed = bytearray(self.path(role).read_bytes().strip())
        return str(nkeys.from_seed(seed).public_key.decode())

    def users(self) -> tuple[NatsUser, ...]:
        return tuple(NatsUser(role, nkey=self.public_key(role)) for role in ROLES)

    @property
    def route_password(self) -> str:
        return (self.directory / "route.password").read_text().strip()

    def env(self, role: str) -> dict[str, str]:
        """What a service started with this role needs in its environment."""
        return {"NATS_CREDS": str(self.path(role))}
