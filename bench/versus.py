"""Our node side by side with Centrifugo (issue 16): the same Go load generator drives
both in the same run, on the same machine. Ours is measured twice: with sends going
through the node over WebSocket, as users send, and with publishes straight to the log
(``nats pub``'s path). Every figure's ceiling is Centrifugo's, and its ratio ours over
Centrifugo's. The machine is shared and noisy (a single run of a capacity step moves by
half): each figure is the median of ``ROUNDS`` rounds that alternate ours and
Centrifugo's, and the note lists every round."""

import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

import websockets

from bench import loadgen
from bench.centrifugo import Centrifugo
from bench.common import TOKEN, Figure, NodeProc, start_nats
from chatlog.roles import PUBLISHER

SECONDS = 3.0
ROUNDS = 3


def _best(steps: list[dict[str, Any]], clients: int, channels: int) -> tuple[float, str]:
    """The most deliveries/s of a step with every frame delivered at p99 <= 50 ms, and the
    steps as a note."""
    best, notes = 0.0, []
    for step in steps:
        per_s = step["rate"] * clients / channels
        notes.append(f"{per_s / 1000:,.0f}k: p99 {step['p99_ms']:.0f} ms")
        if step.get("error"):
            notes[-1] += f" (the server closed the sender: {step['error'][:60]})"
        if step["p99_ms"] <= 50 and step["delivered"] >= step["expected"]:
            best = step["delivered"] / SECONDS
    return best, ", ".join(notes)


async def _ours(
    work: Path,
    go: Path,
    clients: int,
    channels: int,
    rates: list[float],
    workers: int,
    stop_above: float,
) -> dict[str, list[dict[str, Any]]]:
    """Steps through the node, then steps published straight to the log, on one node."""
    server = await start_nats(work)
    node = NodeProc(server, "--workers", str(workers))
    try:
        await asyncio.to_thread(node.wait_ready)
        pids = [*node.pids(), server.server.proc.pid]  # type: ignore[union-attr]
        out = {}
        for via, nats in (("ws", None), ("nats", (server.url, str(server.creds.path(PUBLISHER))))):
            out[via] = await asyncio.to_thread(
                loadgen.drive, go, [node.url], TOKEN, clients, channels, rates, SECONDS, pids,
                stop_above, "chat", nats, via,  # a channel prefix each: no history counted
            )  # fmt: skip
        return out
    finally:
        node.stop()
        server.stop()


async def _theirs(
    work: Path, go: Path, cf: Path, clients: int, channels: int, rates: list[float], stop: float
) -> list[dict[str, Any]]:
    peer = Centrifugo(cf, work)
    try:
        await asyncio.to_thread(peer.wait_ready)
        return await asyncio.to_thread(
            loadgen.drive, go, [peer.url], "", clients, channels, rates, SECONDS,
            [peer.proc.pid], stop, "centrifugo",
        )  # fmt: skip
    finally:
        peer.stop()


async def capacity(
    work: Path,
    go: Path,
    cf: Path | None,
    clients: int,
    channels: int,
    rates: list[float],
    number: str,
    workers: int = 1,
) -> list[Figure]:
    """Deliveries/s one node sustains at p99 <= 50 ms, rate by rate until it does not."""
    best: dict[str, list[float]] = {"ws": [], "nats": [], "cf": []}
    notes: dict[str, list[str]] = {"ws": [], "nats": [], "cf": []}
    for _ in range(ROUNDS):
        ours = await _ours(work, go, clients, channels, rates, workers, 50.0)
        if cf is not None:
            ours["cf"] = await _theirs(work, go, cf, clients, channels, rates, 50.0)
        for key, steps in ours.items():
            value, note = _best(steps, clients, channels)
            best[key].append(value)
            notes[key].append(note)
    peer = statistics.median(best["cf"]) if best["cf"] else None
    figures = []
    for via, label in (("ws", "sends through the node"), ("nats", "publishes to the log")):
        value = statistics.median(best[via])
        ratio = value / peer if peer else None
        gated = via == "ws" and channels <= 10
        figures.append(
            Figure(
                number,
                f"delivery capacity at p99 <= 50 ms, one node ({workers} worker(s)), "
                f"{clients:,} clients over {channels} channels, {label}; ceiling: Centrifugo "
                f"(median of {ROUNDS} rounds)",
                value,
                "deliveries/s",
                ceiling=peer,
                ratio=ratio,
                target=">= 50,000/s and >= 1.0" if gated else "report",
                passed=(value >= 50_000 and (ratio or 0) >= 1.0) if gated else None,
                note=f"ours: {' | '.join(notes[via])}; Centrifugo: "
                + (" | ".join(notes["cf"]) or "not built"),
            )
        )
    return figures


async def latency(
    work: Path,
    go: Path,
    cf: Path | None,
    clients: int,
    channels: int,
    rate: float,
    number: str,
    target: str,
    workers: int = 1,
) -> list[Figure]:
    """p50/p99 from send to receipt at one rate, one node; p99 against Centrifugo's."""
    runs: dict[str, list[dict[str, Any]]] = {"ws": [], "nats": [], "cf": []}
    for _ in range(ROUNDS):
        ours = await _ours(work, go, clients, channels, [rate], workers, 1e9)
        if cf is not None:
            ours["cf"] = await _theirs(work, go, cf, clients, channels, [rate], 1e9)
        for key, (step,) in ours.items():
            runs[key].append(step)

    def median(key: str, field: str) -> float:
        return float(statistics.median(step[field] for step in runs[key]))

    peer = median("cf", "p99_ms") if runs["cf"] else None
    figures = []
    for via, label in (("ws", "sends through the node"), ("nats", "publishes to the log")):
        p99 = median(via, "p99_ms")
        ratio = p99 / peer if peer else None
        within = {"<= 10 ms": p99 <= 10, "<= 1.0": (ratio or 99) <= 1.0}[target]
        complete = all(step["delivered"] >= step["expected"] for step in runs[via])
        rounds = ", ".join(f"{step['p99_ms']:.1f}" for step in runs[via])
        note = (
            f"p99 by round {rounds} ms; p50 {median(via, 'p50_ms'):.1f} ms; server CPU (node "
            f"+ nats-server) {median(via, 'nodes_cpu_cores'):.2f} cores"
        )
        if peer is not None:
            theirs = ", ".join(f"{step['p99_ms']:.1f}" for step in runs["cf"])
            note += (
                f"; Centrifugo p99 by round {theirs} ms, p50 {median('cf', 'p50_ms'):.1f} ms, "
                f"CPU {median('cf', 'nodes_cpu_cores'):.2f} cores"
            )
        figures.append(
            Figure(
                number,
                f"p99 send to receipt, {clients:,} clients over {channels} channel(s), "
                f"{rate * clients / channels:,.0f} deliveries/s, one node ({workers} "
                f"worker(s)), {label}; ceiling: Centrifugo (median of {ROUNDS} rounds)",
                p99,
                "ms",
                ceiling=peer,
                ratio=ratio,
                target=target if via == "ws" else "report",
                passed=within and complete if via == "ws" else None,
                note=note,
            )
        )
    return figures


async def idle_memory(work: Path, cf: Path | None, count: int, ours: float) -> list[Figure]:
    """Centrifugo's memory per idle WebSocket (connected, nothing else), beside figure
    5's (``ours``, measured by figures.idle_connections)."""
    if cf is None:
        return []
    peer = Centrifugo(cf, work)
    sockets = []
    try:
        await asyncio.to_thread(peer.wait_ready)
        before = peer.rss()
        url = peer.url.replace("http", "ws") + "/connection/websocket"

        async def connect() -> Any:
            ws = await websockets.connect(url, open_timeout=60)
            await ws.send(json.dumps({"id": 1, "connect": {}}))
            await ws.recv()
            return ws

        for start in range(0, count, 200):
            sockets += await asyncio.gather(*(connect() for _ in range(min(200, count - start))))
        await asyncio.sleep(1)
        per = (peer.rss() - before) / count / 1024
    finally:
        for ws in sockets:
            await ws.close()
        peer.stop()
    return [
        Figure(
            "5",
            f"memory per idle WebSocket ({count:,} open), ours; ceiling: Centrifugo's",
            ours,
            "KB",
            ceiling=per,
            ratio=ours / per,
            target="<= 30 KB and <= 1.0",
            passed=ours <= 30 and ours <= per,
        )
    ]
