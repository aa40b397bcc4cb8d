"""Settings of the ``chat-cluster`` commands that are not services: ``up``, ``down``,
``status``, and the clients ``send`` and ``tail``. Defaults live here and only here."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from auth import keys
from chatlog import DEFAULT_CHANNEL, InvalidInput, LogSettings, StreamSpec, check_channel
from chatlog.roles import ROLES
from options import byte_size, int_at_least, nested, port, setting

DEFAULT_DATA_DIR = "./.chat-cluster"
FALLBACK_NODE = "http://127.0.0.1:8001"


def _data_dir(help: str) -> str:
    return setting(DEFAULT_DATA_DIR, flag="--data-dir", env="CHAT_CLUSTER_DIR", help=help)  # type: ignore[no-any-return]


def nats_servers(raw: str) -> int:
    value = int(raw)
    if value not in (1, 3):
        raise ValueError("must be 1 (one server, R1 stream) or 3 (a cluster, R3 stream)")
    return value


@dataclass(frozen=True)
class UpSettings:
    nodes: int = setting(
        3, flag="--nodes", env=None, parse=int_at_least(1, 99), help="chat nodes to start"
    )
    base_port: int | None = setting(
        None, flag="--base-port", env=None, parse=port,
        help="move every port: nodes B+1.., archiver B+100, NATS B+200.., routes B+210.., "
        "monitor B+220..",
        shown="nodes 8001.., archiver 8100, NATS 4222, routes 6222, monitor 8222",
    )  # fmt: skip
    data_dir: str = _data_dir("NATS store, logs, credentials, token keys and cluster.json")
    auth: bool = setting(
        True, flag="--auth", env=None,
        help="generate a token signing key in <data-dir>/auth and start every service "
        "with it; --no-auth starts them in anonymous mode (anyone is anyone)",
        shown="on",
    )  # fmt: skip
    nats_cluster: int = setting(
        1, flag="--nats-cluster", env=None, parse=nats_servers,
        help="1 nats-server (R1 stream) or 3 (R3)",
    )  # fmt: skip
    store_bytes: int = setting(
        4 * 1024**3, flag="--store-bytes", env=None, parse=byte_size,
        help="JetStream storage of each nats-server (80% goes to the log, 15% to "
        "snapshots); never more than half the disk's free space when `up` starts",
        shown="4GiB",
    )  # fmt: skip


@dataclass(frozen=True)
class DirSettings:
    """``down`` and ``status``: which local cluster."""

    data_dir: str = _data_dir("the directory `chat-cluster up` runs in")


def node_url(raw: str) -> str:
    """``http://host:port``; ``host:port`` alone means http."""
    url = raw.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be a chat node's base URL, such as http://127.0.0.1:8001")
    if parts.path or parts.query:
        raise ValueError("must be a base URL without a path, such as http://127.0.0.1:8001")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from exc
    return url


def channel(raw: str) -> str:
    try:
        return check_channel(raw)
    except InvalidInput as exc:
        raise ValueError(exc.detail) from exc


@dataclass(frozen=True)
class ClientSettings:
    node: str | None = setting(
        None, flag="--node", env="CHAT_NODE", parse=node_url,
        help="chat node base URL",
        shown=f"the first node in <data-dir>/cluster.json if `up` runs there, else {FALLBACK_NODE}",
    )  # fmt: skip
    data_dir: str = _data_dir(
        "where to look for cluster.json when --node is not given, and for the signing key "
        "that mints a token when CHAT_TOKEN is not given"
    )
    channel: str = setting(
        DEFAULT_CHANNEL, flag="--channel", env="CHAT_CHANNEL", parse=channel, help="channel"
    )
    token: str | None = setting(
        None, flag=None, env="CHAT_TOKEN", secret=True,
        help="the token to send with (`chat-cluster token` prints one)",
        shown="a 1-hour token for --user on --channel, minted with <data-dir>'s signing key",
    )  # fmt: skip
    user: str = setting(
        "cli", flag="--user", env="CHAT_USER",
        help="who a minted token is for (the sender shown; ignored with CHAT_TOKEN)",
    )  # fmt: skip

    def bearer(self) -> str | None:
        """CHAT_TOKEN, or a short-lived token minted with a local cluster's key, or none
        (a node in --no-auth mode)."""
        ch = (self.channel,)
        return self.token or minted(Path(self.data_dir), self.user, read=ch, send=ch)

    def nodes(self) -> list[str]:
        """The node to use, then any others the local cluster has (for failover)."""
        if self.node is not None:
            return [self.node]
        found = local_nodes(Path(self.data_dir))
        return found or [FALLBACK_NODE]


def minted(data_dir: Path, user: str, **claims: Any) -> str | None:
    """A 1-hour token signed with a local cluster's key, if ``data_dir`` has one."""
    key = data_dir / "auth" / keys.SIGNING_KEY
    if not key.exists():
        return None
    return keys.mint(keys.load(key), user, ttl=3600, **claims)


def local_nodes(data_dir: Path) -> list[str]:
    """The chat nodes' URLs from a running ``up``'s cluster.json, in node order."""
    try:
        state = json.loads((data_dir / "cluster.json").read_text())
    except (OSError, ValueError):
        return []
    services = state.get("services", {}) if isinstance(state, dict) else {}
    return [
        service["url"]
        for name, service in sorted(services.items(), key=lambda kv: _node_number(kv[0]))
        if name.startswith("node-") and isinstance(service, dict) and "url" in service
    ]


def _node_number(name: str) -> int:
    tail = name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


def node_urls(raw: str) -> tuple[str, ...]:
    return tuple(node_url(part) for part in raw.split(",") if part.strip())


def local_nats(data_dir: Path) -> tuple[str, ...]:
    """The NATS URLs of a running ``up``, from its cluster.json."""
    try:
        state = json.loads((data_dir / "cluster.json").read_text())
        return tuple(server["url"] for server in state.get("nats", []))
    except (OSError, ValueError, KeyError, TypeError):
        return ()


@dataclass(frozen=True)
class EnsureSettings:
    """``ensure-stream``: the admin's connection and the streams to create or check."""

    log: LogSettings = nested(LogSettings)
    stream: StreamSpec = nested(StreamSpec)


@dataclass(frozen=True)
class TokenSettings:
    """``chat-cluster token``: mint a token with a local cluster's signing key."""

    data_dir: str = _data_dir("the local cluster whose signing key (auth/) signs")
    ttl: float = setting(
        3600.0, flag="--ttl", env=None, parse=keys.duration,
        help="how long the token is valid: 30s, 15m, 1h, 12h (services refuse more than "
        "AUTH_MAX_LIFETIME, 24h by default)", shown="1h",
    )  # fmt: skip


@dataclass(frozen=True)
class GrantSettings:
    """``grant`` and ``revoke``: the grants bucket, with admin credentials."""

    data_dir: str = _data_dir("a local cluster: its NATS and admin credentials when not given")
    log: LogSettings = nested(LogSettings)


@dataclass(frozen=True)
class VerifySettings:
    nodes: tuple[str, ...] = setting(
        (), flag="--nodes", env="CHAT_NODES", parse=node_urls,
        help="chat nodes to compare with the log (comma-separated base URLs)",
        shown="every node in <data-dir>/cluster.json",
    )  # fmt: skip
    data_dir: str = _data_dir(
        "a local cluster: its nodes, NATS and archiver credentials when not given"
    )
    token: str | None = setting(
        None, flag=None, env="CHAT_TOKEN", secret=True,
        help="an admin token for --records (which reads every channel)",
        shown="one minted with <data-dir>'s signing key",
    )  # fmt: skip
    records: bool = setting(
        False, flag="--records", env=None,
        help="also compare every record every node serves with the log's, whatever the "
        "digests say (reads everything: slow on a long log)",
    )  # fmt: skip
    log: LogSettings = nested(LogSettings)


def role(raw: str) -> str:
    if raw not in ROLES:
        raise ValueError(f"must be one of {', '.join(ROLES)}")
    return raw
