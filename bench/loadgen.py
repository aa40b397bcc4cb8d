"""The Go load generator (bench/loadgen): built once per run with the machine's Go, from
the module proxy; the delivery figures use it so that the generator is not what they
measure (the Python one needed 0.7 of a core at 50,000 deliveries a second here)."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).parent / "loadgen"


def build(work: Path) -> Path | None:
    """The binary, or None without Go (the figures then fall back to the Python driver
    and say so)."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = work / "loadgen"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=SOURCE, check=True)
    return binary


def drive(
    binary: Path,
    nodes: list[str],
    token: str,
    clients: int,
    channels: int,
    rates: list[float],
    seconds: float,
    pids: list[int],
    stop_above: float = 50.0,
    protocol: str = "chat",
    via_nats: tuple[str, str] | None = None,
    prefix: str = "f",
) -> list[dict[str, Any]]:
    """One dict per step: rate, delivered, expected, p50_ms, p99_ms, max_ms, cpu_cores (of
    the generator), nodes_cpu_cores (of ``pids``). Stops after the first step past
    ``stop_above`` ms or short of deliveries. ``protocol`` "centrifugo" drives Centrifugo;
    ``via_nats`` (NATS URL, publisher nkey seed file) publishes straight to the log instead
    of sending through the first node."""
    args = [
        str(binary),
        "-nodes", ",".join(nodes),
        "-token", token,
        "-clients", str(clients),
        "-channels", str(channels),
        "-rates", ",".join(f"{r:g}" for r in rates),
        "-seconds", str(seconds),
        "-stop-above", str(stop_above),
        "-pids", ",".join(map(str, pids)),
        "-protocol", protocol,
        "-prefix", prefix,
    ]  # fmt: skip
    if via_nats is not None:
        args += ["-via", "nats", "-nats-url", via_nats[0], "-nkey", via_nats[1]]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
