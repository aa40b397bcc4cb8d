"""The benchmark suite: ``nox -s bench`` (``--quick`` for a smaller, faster pass).

Writes bench/results/latest.json and latest.md. Every figure that has a ceiling
is measured beside it in the same run: this machine is shared and noisy, so
ratios hold where absolute numbers drift.
"""

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from bench import centrifugo, figures, loadgen, presence, versus
from bench.common import RESULTS, Figure, machine, raise_fd_limit, write_results

VERSUS = {"3c", "3d", "3e", "3f", "3g", "5"}
"""The figures with Centrifugo beside ours."""
RATES_10 = [100, 200, 300, 500, 700, 1000, 1500, 2000, 3000]
"""Send rates of figures 3d and 3e (1,000 clients over 10 channels: x100 deliveries/s)."""


def _dated(kept: str, produced: set[str], now: str) -> str:
    """The table's date line after a partial run: the full run's date, then when each
    figure measured since was measured ("figures 3, 3b: <when>"), these ones now."""
    base, _, rest = kept.partition(" (")
    notes = []
    for note in rest.rstrip(")").split("; ") if rest else []:
        names, _, when = note.partition(": ")
        left = [n for n in names.split(" ", 1)[-1].split(", ") if n not in produced]
        if left and when:
            notes.append(f"figure{'s' if len(left) > 1 else ''} {', '.join(left)}: {when}")
    notes.append(f"figures {', '.join(sorted(produced))}: {now}")
    return f"{base} ({'; '.join(notes)})"


async def main(quick: bool, only: set[str] | None) -> None:
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    scale = 10 if quick else 1
    results: list[Figure] = []
    go = loadgen.build(work)
    print(
        f"-- load generator: {'Go (bench/loadgen)' if go else 'Python (no Go found)'}", flush=True
    )

    async def section(name: str, coro: object, number: str = "") -> None:
        if only is not None and number not in only:
            coro.close()  # type: ignore[attr-defined]
            return
        print(f"-- {name}", flush=True)
        try:
            got = await coro  # type: ignore[misc]
        except Exception as exc:  # a broken figure is reported, the rest still run
            print(f"   failed: {exc!r}", flush=True)
            results.append(Figure(number or "-", f"{name} (did not complete: {exc!r:.80})", 0, ""))
            return
        for figure in got:
            print(f"   {figure}", flush=True)
        results.extend(got)

    await section(
        "catch-up and memory per message",
        figures.catch_up_and_memory(work, 1_000_000 // scale),
        number="1",  # and 4
    )
    await section(
        "write throughput and durability cost",
        figures.write_throughput(work, 20_000 // scale),
        number="2",  # and 6
    )
    await section(
        "fan-out, 1,000 clients over 100 channels, 3 nodes",
        figures.fan_out(work, 1000 // scale, 100 // scale, 1000 / scale, 5, 3, "3", 20, go),
        number="3",
    )
    await section(
        "hot channel, 1,000 clients on one channel, 3 nodes",
        figures.fan_out(work, 1000 // scale, 1, 10, 5, 3, "3b", 50, go),
        number="3b",
    )
    cf = centrifugo.build(work) if go is not None and (only is None or only & VERSUS) else None
    print(
        f"-- Centrifugo: {'v6.9.1' if cf else 'not built (no Go or no module proxy)'}", flush=True
    )
    if go is not None:
        await section(
            "delivery capacity, one node, 1,000 clients over 100 channels, vs Centrifugo",
            versus.capacity(
                work, go, cf, 1000 // scale, 100 // scale, [500, 1000, 2000, 3000, 4000, 6000], "3c"
            ),
            number="3c",
        )
        await section(
            "delivery capacity, one node, 1,000 clients over 10 channels, vs Centrifugo",
            versus.capacity(work, go, cf, 1000 // scale, 10, RATES_10, "3d"),
            number="3d",
        )
        await section(
            "delivery capacity, one node with --workers 2, 1,000 clients over 10 channels",
            versus.capacity(work, go, cf, 1000 // scale, 10, RATES_10, "3e", workers=2),
            number="3e",
        )
        await section(
            "fan-out at 10,000 deliveries/s, one node, vs Centrifugo",
            versus.latency(work, go, cf, 1000 // scale, 100 // scale, 1000, "3f", "<= 10 ms"),
            number="3f",
        )
        await section(
            "hot channel, 1,000 clients on one channel, one node, vs Centrifugo",
            versus.latency(work, go, cf, 1000 // scale, 1, 10, "3g", "<= 1.0"),
            number="3g",
        )
    idle: list[Figure] = []

    async def idle_both() -> list[Figure]:
        idle.extend(await figures.idle_connections(work, 10_000 // scale))
        return idle + await versus.idle_memory(work, cf, 10_000 // scale, idle[0].value)

    await section("idle WebSocket memory, vs Centrifugo", idle_both(), number="5")
    await section("telemetry cost", figures.telemetry_cost(work, 20_000 // scale), number="7")
    await section(
        "credentials and digest cost",
        figures.integrity_cost(work, 200_000 // scale, 10_000 // scale),
        number="8",
    )
    await section(
        "user tokens cost", figures.auth_cost(work, 10_000 // scale, 2_000 // scale), number="9"
    )
    await section(
        "client limits cost",
        figures.limits_cost(work, 10_000 // scale, 2_000 // scale),
        number="10",
    )
    await section(
        "presence cost", presence.presence_cost(work, 10_000 // scale, 100, 30), number="11"
    )
    meta = machine()
    if only is not None:
        # One figure again: the others stay as the last full run measured them.
        kept = json.loads((RESULTS / "latest.json").read_text())
        produced = {f.number for f in results} | only
        results = [Figure(**f) for f in kept["figures"] if f["number"] not in produced] + results
        meta["date"] = _dated(kept["machine"]["date"], produced, str(meta["date"]))
    print(write_results(results, meta))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only", help="run these figures (numbers, comma-separated) and update their rows"
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    sys.exit(asyncio.run(main(args.quick, only)))
