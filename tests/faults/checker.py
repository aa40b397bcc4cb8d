"""Reads every node's history and the archiver's, and says what broke.

lost: acknowledged but missing from a node or the archiver. duplicated: one id
twice on one replica. reordered: a replica's sequence not ascending, a seq that
differs between replicas, or an acknowledged id at another seq than its ack.
unexpected: present but never sent. convergence: from the last fault's heal to
every live node being ready, at the stream's last seq, with equal histories.
"""

import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chat_cluster.local import Service
from tests.faults.load import CHANNELS, Attempt
from tests.support import ROOT, all_messages, http, wait_until

REPORTS = Path(os.environ.get("FAULTS_REPORT_DIR", ROOT / ".faults"))


@dataclass
class Report:
    scenario: str
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    raw: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    unexpected: int = 0
    convergence_s: float | None = None
    nats_recovery_s: float | None = None
    """Partition scenarios: from the network heal until NATS reports every server healthy."""
    replicas_checked: int = 0
    examples: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return (self.lost, self.duplicated, self.reordered, self.unexpected) == (0, 0, 0, 0)

    def save(self) -> None:
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / f"{self.scenario}.json").write_text(json.dumps(asdict(self), indent=2))
        (REPORTS / f"{self.scenario}.txt").write_text(self.summary() + "\n")

    def summary(self) -> str:
        conv = "never" if self.convergence_s is None else f"{self.convergence_s:.2f}s"
        return (
            f"{self.scenario}: sent {self.sent}, acked {self.acknowledged}, failed "
            f"{self.failed}, raw {self.raw}, lost {self.lost}, duplicated {self.duplicated}, "
            f"reordered {self.reordered}, unexpected {self.unexpected}, converged {conv} "
            f"across {self.replicas_checked} replicas"
            + (
                ""
                if self.nats_recovery_s is None
                else f"; NATS healthy {self.nats_recovery_s:.2f}s after the heal"
            )
        )


def _history(base: str, last_seq: int) -> list[dict[str, Any]]:
    """Every record a replica serves. A 503 right after a fault is retried for a while,
    as a client would; anything else fails the check."""

    def read() -> tuple[list[dict[str, Any]]] | None:
        rows: list[dict[str, Any]] = []
        try:
            for channel in CHANNELS:
                if base.endswith("/messages"):
                    rows += all_messages(f"{base}/{channel}", channel)
                else:
                    rows += all_messages(base, channel, last_seq)
        except AssertionError as exc:
            if " 503, " not in str(exc):
                raise
            return None
        return (rows,)  # truthy even when the replica is empty

    answer = wait_until(read, timeout=20, what=f"{base} to answer")
    assert answer is not None
    return answer[0]


def _progress(node: Service) -> tuple[int, Any]:
    try:
        return http("GET", node.url + "/readyz", timeout=2)
    except OSError:
        return 0, None


def converge(
    nodes: list[Service], last_seq: int, healed_at: float, timeout: float = 30
) -> float | None:
    """Seconds from ``healed_at`` until all nodes are ready at ``last_seq``; None if never."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [_progress(n) for n in nodes]
        if all(s == 200 and body and body["applied"] >= last_seq for s, body in states):
            return time.monotonic() - healed_at
        time.sleep(0.05)
    return None


def check(
    scenario: str,
    attempts: dict[str, Attempt],
    nodes: list[Service],
    archiver: Service | None,
    last_seq: int,
    healed_at: float,
) -> Report:
    report = Report(scenario)
    report.convergence_s = converge(nodes, last_seq, healed_at)
    report.raw = sum(a.via == "raw" for a in attempts.values())
    report.sent = len(attempts)
    acked = {a.id: a.seq for a in attempts.values() if a.seq is not None}
    report.acknowledged = len(acked)
    failed = [a for a in attempts.values() if a.seq is None and a.via != "raw"]
    report.failed = len(failed)
    report.examples += [f"failed {a.id} after {a.tries} tries: {a.errors[-3:]}" for a in failed[:5]]
    bases = [n.url for n in nodes] + ([archiver.url + "/messages"] if archiver else [])
    by_seq: dict[int, str] = {}
    for base in bases:
        rows = _history(base, last_seq)
        report.replicas_checked += 1
        ids = [r["id"] for r in rows]
        seen: set[str] = set()
        for row in rows:
            if row["id"] in seen:
                report.duplicated += 1
                report.examples.append(f"{base}: {row['id']} twice")
            seen.add(row["id"])
            if row["id"] not in attempts:
                report.unexpected += 1
                report.examples.append(f"{base}: unexpected {row['id']}")
            if acked.get(row["id"], row["seq"]) != row["seq"]:
                report.reordered += 1
                report.examples.append(
                    f"{base}: {row['id']} at {row['seq']}, acked {acked[row['id']]}"
                )
            other = by_seq.setdefault(row["seq"], row["id"])
            if other != row["id"]:
                report.reordered += 1
                report.examples.append(f"{base}: seq {row['seq']} is {row['id']} elsewhere {other}")
        for channel in CHANNELS:
            seqs = [r["seq"] for r in rows if r["channel"] == channel]
            report.reordered += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        missing = set(acked) - set(ids)
        report.lost += len(missing)
        report.examples += [f"{base}: lost {m}" for m in sorted(missing)[:5]]
    report.examples = report.examples[:20]
    report.save()
    return report
