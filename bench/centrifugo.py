"""Centrifugo (v6, built from its Go module) as a peer in the delivery figures: same
machine, same run, driven by the same Go load generator (bench/loadgen -protocol
centrifugo). In-memory engine, and insecure client mode (any socket may subscribe and
publish, no token): for the benchmark only, as the issue asks."""

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from chat_cluster.processes import free_port, terminate

MODULE = "github.com/centrifugal/centrifugo/v6@v6.9.1"


def build(work: Path) -> Path | None:
    """The binary (cached in ~/.cache/chat-cluster-bench between runs), or None without
    Go or the module proxy (the figures then have no Centrifugo column, and say so)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chat-cluster-bench"
    binary = cache / "centrifugo-v6.9.1"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    gobin = work / "gobin"
    done = subprocess.run(
        [go, "install", MODULE],
        env={**os.environ, "GOBIN": str(gobin)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        print(f"   centrifugo not built: {done.stderr[-400:]}", flush=True)
        return None
    shutil.move(gobin / "centrifugo", binary)
    return binary


class Centrifugo:
    def __init__(self, binary: Path, work: Path) -> None:
        self.port = free_port()
        config = {
            "http_server": {"address": "127.0.0.1", "port": self.port},
            "client": {"insecure": True, "allowed_origins": ["*"]},
            "channel": {
                "without_namespace": {
                    "allow_subscribe_for_client": True,
                    "allow_publish_for_client": True,
                }
            },
            "health": {"enabled": True},
            "log": {"level": "error"},
            "usage_stats": {"disabled": True},
        }
        path = work / f"centrifugo-{self.port}.json"
        path.write_text(json.dumps(config))
        self.log = (work / f"centrifugo-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [str(binary), "-c", str(path)], stdout=self.log, stderr=subprocess.STDOUT
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("centrifugo did not become healthy")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        terminate(self.proc, 10)
        self.log.close()
