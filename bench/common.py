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

from chat_cluster.local import is_ready
from chat_cluster.natsserver import NatsServer, ServerConfig, checked_binary
from chat_cluster.processes import free_port

RESULTS = Path(__file__).parent / "results"


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


def start_nats(workdir: Path, sync_always: bool = True) -> NatsServer:
    binary, _ = checked_binary()
    name = "sync" if sync_always else "nosync"
    own = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))  # a fresh store every time
    config = ServerConfig(
        f"bench-{name}", own / "js", free_port(), free_port(), sync_always=sync_always
    )
    server = NatsServer(binary, config, own)
    server.start()
    server.wait_ready()
    return server


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class NodeProc:
    """A chat node started the way users start it; children inherit our fd limit."""

    def __init__(self, nats_url: str, *extra: str, env: dict[str, str] | None = None) -> None:
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

    def rss(self) -> int:
        return rss_of(self.proc.pid)

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
