"""Shared by the benchmarks: servers, node processes, RSS, machine facts, the results table."""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from auth import keys
from chat_cluster.admin import ensure_stream
from chat_cluster.credentials import Credentials
from chat_cluster.local import is_ready
from chat_cluster.natsserver import Auth, NatsServer, ServerConfig, checked_binary
from chat_cluster.processes import free_port
from chatlog import ChatLog, LogSettings, StreamSpec
from chatlog.roles import ADMIN, NODE

RESULTS = Path(__file__).parent / "results"

# User tokens, as in production: one signing key for the run, every node verifies.
KEYS = Path(tempfile.mkdtemp(prefix="chat-bench-keys-"))
_SIGNING = keys.load(keys.generate(KEYS))
TOKEN = keys.mint(_SIGNING, "bench", ttl=24 * 3600, admin=True)
HEADERS = {"authorization": f"Bearer {TOKEN}"}
"""For every WebSocket handshake and REST request of the benchmarks."""


def user_token(user: str) -> str:
    return keys.mint(_SIGNING, user, ttl=24 * 3600, read=("*",), send=("*",))


@dataclass
class Figure:
    number: str
    name: str
    value: float
    unit: str
    ceiling: float | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    note: str = ""


STORE = 8 * 1024**3
"""JetStream storage of a benchmark server: the log gets 80% of it (a million messages
take about 400 MB)."""


class BenchNats:
    """A nats-server as production runs it (credentials and permissions on, unless
    ``auth`` is off: for the figures that measure what credentials cost), with the
    streams created by the admin. ``restart`` keeps the store and switches auth."""

    def __init__(self, workdir: Path, sync_always: bool = True, auth: bool = True) -> None:
        self.binary, _ = checked_binary()
        name = "sync" if sync_always else "nosync"
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))  # a fresh store
        self.creds = Credentials.ensure(workdir)
        self.sync_always = sync_always
        self.ports = (free_port(), free_port())
        self.server = self._start(auth)

    def _start(self, auth: bool) -> NatsServer:
        self.auth = auth
        self.config = ServerConfig(
            "bench",
            self.dir / "js",
            *self.ports,
            sync_always=self.sync_always,
            # Off: the same account and streams, anyone in with no checks at all.
            auth=Auth(self.creds.users(), STORE, insecure_anonymous=not auth),
            store_bytes=STORE,
        )
        server = NatsServer(self.binary, self.config, self.dir, creds=self.creds)
        server.start()
        server.wait_ready()
        return server

    def restart(self, auth: bool) -> None:
        self.server.stop()
        self.server = self._start(auth)

    @property
    def url(self) -> str:
        return self.config.url

    def settings(self, role: str = NODE, **extra: object) -> LogSettings:
        creds = str(self.creds.path(role)) if self.auth else None
        return LogSettings(nats_urls=(self.url,), creds=creds, **extra)  # type: ignore[arg-type]

    def env(self, role: str = NODE) -> dict[str, str]:
        return self.creds.env(role) if self.auth else {}

    def connect_options(self, role: str = NODE) -> dict[str, object]:
        """For a bare nats-py client (the ceilings): the role's key and inbox."""
        if not self.auth:
            return {}
        return {"nkeys_seed": str(self.creds.path(role)), "inbox_prefix": f"_INBOX_{role}"}

    async def ensure_streams(self) -> None:
        # Given sizes: without credentials there is no account limit to share out.
        spec = StreamSpec(max_bytes=int(STORE * 0.8), snapshot_max_bytes=int(STORE * 0.15))
        await ensure_stream(self.settings(ADMIN), spec, 60, "bench admin")

    async def log(self, role: str = NODE, timeout: float = 30) -> ChatLog:
        return await ChatLog.open(self.settings(role, publish_timeout=timeout), "bench", role)

    def stop(self) -> None:
        self.server.stop()


async def start_nats(workdir: Path, sync_always: bool = True, auth: bool = True) -> BenchNats:
    nats = BenchNats(workdir, sync_always, auth)
    await nats.ensure_streams()
    return nats


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class NodeProc:
    """A chat node started the way users start it; children inherit our fd limit."""

    def __init__(
        self,
        nats: BenchNats,
        *extra: str,
        env: dict[str, str] | None = None,
        users: bool = True,
    ) -> None:
        """``users`` False: ``AUTH=none``, for the figures that measure what tokens cost."""
        nats_url = nats.url
        tokens = {"AUTH": "jwt", "JWKS_FILE": str(KEYS / keys.JWKS)} if users else {"AUTH": "none"}
        # One token drives every figure's load: a per-user send rate would measure itself.
        tokens["SEND_RATE"] = "0"
        tokens["WS_PER_USER"] = "0"
        env = {**nats.env(NODE), **tokens, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chat_cluster",
                "node",
                "--nats-url",
                nats_url,
                "--port",
                str(self.port),
                "--log-level",
                "WARNING",
                *extra,
            ],
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    def ready(self) -> bool:
        return is_ready(self.url)

    def wait_ready(self, timeout: float = 120) -> float:
        t0 = time.perf_counter()
        while not self.ready():
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError("node not ready")
            time.sleep(0.01)
        return time.perf_counter() - t0

    def pids(self) -> list[int]:
        """The node's process and, with ``--workers``, its workers."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [self.proc.pid, *map(int, path.read_text().split())]

    def rss(self) -> int:
        return sum(rss_of(pid) for pid in self.pids())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine() -> dict[str, object]:
    _, version = checked_binary()
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nats_server": version,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "platform": platform.platform(),
    }


def write_results(figures: list[Figure], meta: dict[str, object]) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(
        json.dumps({"machine": meta, "figures": [asdict(f) for f in figures]}, indent=2)
    )
    lines = [
        f"Measured {meta['date']} on {meta['cores']} cores / {meta['memory_gib']} GiB, "
        f"nats-server {meta['nats_server']}, Python {meta['python']}.",
        "",
        "| # | figure | value | ceiling | ratio | target | pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        ceiling = "" if f.ceiling is None else f"{f.ceiling:,.1f}"
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
        verdict = {True: "pass", False: "**fail**", None: "report"}[f.passed]
        name = f.name + (f" ({f.note})" if f.note else "")
        lines.append(
            f"| {f.number} | {name} | {f.value:,.1f} {f.unit} | {ceiling} | {ratio} "
            f"| {f.target} | {verdict} |"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / "latest.md").write_text(text)
    return text


class Sink:
    """An OTLP/HTTP endpoint on 127.0.0.1 that accepts everything and keeps only a count."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                sink.requests += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
