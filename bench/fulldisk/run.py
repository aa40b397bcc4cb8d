"""Full-disk trial: what nats-server does when its JetStream store's filesystem fills, and
what a chat node answers during and after. Findings: docs/full-disk.md.

Run as root on Linux (it mounts tmpfs), from the repository root, with the test
environment (``python3 -m nox -s tests`` made it)::

    .nox/tests/bin/python bench/fulldisk/run.py --scenario disk     # ~2 min
    .nox/tests/bin/python bench/fulldisk/run.py --scenario all      # every one below, ~25 min

Each scenario starts ``chat-cluster up --nodes 1 [--nats-cluster 3]`` in a new directory
under /tmp, with each nats-server's store (``<data>/nats`` for one server,
``<data>/nats/nN`` for three) on a tmpfs of its own and the logs on the ordinary disk
(so nats-server and the node can still log while the store is full). Then:

- ``disk``: 1 server, tmpfs 64 MiB, --store-bytes 48 MiB (the log's limit, 80% of that,
  is never reached). 20 sends, a file fills the tmpfs to 100%, sends go on for
  FULL_SECONDS, the file is deleted, sends go on until one is stored (at most
  RECOVER_SECONDS). If none is: ``ensure-stream --log-max-bytes`` (the remedy a 507
  names), then, if still none, nats-server alone is restarted (SIGTERM to its pid in
  cluster.json, then the same binary and config: ``up`` never restarts NATS itself).
- ``self``: as ``disk``, but tmpfs 12 MiB: the log's limit (38 MiB) is larger than the
  disk, so NATS fills the disk with our messages. "Freeing" grows the tmpfs to 64 MiB
  (the log is append-only: nothing in it can be deleted).
- ``limit``: 1 server, --store-bytes 8 MiB: sends until the log's byte limit answers 507,
  then ``ensure-stream --log-max-bytes`` raises it and sends resume (the designed path).
- ``r3-leader``: 3 servers, an R3 stream; only the stream leader's tmpfs is filled.
- ``r3-all``: 3 servers; all three tmpfs are filled (identical volumes fill together).
- ``r3-self``: 3 servers, tmpfs 12 MiB each; NATS fills all three with our messages.
- ``r3-all-k8s``: as ``r3-all``, but the servers are first restarted while the disks are
  still full (what the chart's liveness probe, /healthz?js-enabled-only, would do).

  In the R3 scenarios a server whose JetStream is still off after the space came back is
  restarted even if writes work; before that restart a copy of its store is taken, and if
  the cluster then lost the stream, a standalone nats-server is tried on the copy.

All along, a prober samples every second: the node's /readyz (status, log_full,
connected), its /metrics (chat_log_*, chat_nats_*, chat_ready, chat_publish_errors_*),
reads from the node and the archiver, each nats-server's monitor (/healthz plain,
?js-enabled-only and ?js-server-only; /jsz "disabled") and the disks' usage. At the end
every acknowledged (seq, id) is looked up in the node and in the archiver, and
``chat-cluster verify`` runs.

It prints, per phase: the sends' status and error codes with latencies, what the prober
saw (each distinct value with its count), the streams' bytes on each server's disk, and
the new nats-server and node log lines (grouped, with counts); then the loss check.
Per phase what it saw goes to bench/fulldisk/results/<scenario>.json (every send and
every sample to <scenario>.raw.json.gz). It always ends with
``chat-cluster down``, stops any nats-server it started, and unmounts the tmpfs (even on
failure or Ctrl-C); the directory under /tmp is kept for its logs.
"""

import argparse
import contextlib
import errno
import gzip
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from chat_cluster.natsserver import resolve_binary
from chat_cluster.processes import die_with_parent, terminate

ROOT = Path(__file__).resolve().parents[2]

MiB = 1024 * 1024
FULL_SECONDS = 40.0
"""How long sends go on against a full disk."""
RECOVER_SECONDS = 60.0
"""How long sends go on after space is freed before nats-server is restarted."""
UP_TIMEOUT = 90.0
SEND_TIMEOUT = 20.0
"""The client's timeout for one send (the node's own publish timeout is 5 s)."""
MAX_FILL_SENDS = 12_000
FILL_SECONDS = 180.0
RESULTS = ROOT / "bench" / "fulldisk" / "results"

SCENARIOS: dict[str, dict[str, int]] = {
    "disk": {"tmpfs": 64 * MiB, "store": 48 * MiB, "servers": 1},
    "self": {"tmpfs": 12 * MiB, "store": 48 * MiB, "servers": 1},
    "limit": {"tmpfs": 64 * MiB, "store": 8 * MiB, "servers": 1},
    "r3-leader": {"tmpfs": 64 * MiB, "store": 48 * MiB, "servers": 3},
    "r3-all": {"tmpfs": 64 * MiB, "store": 48 * MiB, "servers": 3},
    "r3-self": {"tmpfs": 12 * MiB, "store": 48 * MiB, "servers": 3},
    "r3-all-k8s": {"tmpfs": 64 * MiB, "store": 48 * MiB, "servers": 3},
}

INTERESTING_METRICS = re.compile(
    r"^(chat_log_\w+|chat_nats_\w+|chat_ready\w*|chat_publish_errors\w*|chat_consumer_resets\w*)"
    r"(\{[^}]*\})? (\S+)$"
)
LOG_NOISE = re.compile(r"\d{4}[-/]\d\d[-/]\d\d[ T][\d:.]+Z?|\b\d{3,}\b|[0-9a-f]{16,}|\[\d+\]")


def log_key(line: str) -> str:
    """A log line with its timestamps, pids, numbers and ids blanked: lines that differ only
    there are grouped and counted."""
    return LOG_NOISE.sub("#", line)[:240]


class LogWatch:
    """New lines of a log file since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode("utf-8", "replace").splitlines()


class Trial:
    def __init__(self, scenario: str, base_port: int) -> None:
        self.scenario = scenario
        self.base_port = base_port
        self.sizes = SCENARIOS[scenario]
        self.work = Path(tempfile.mkdtemp(prefix=f"fulldisk-{scenario}-", dir="/tmp"))
        self.data = self.work / "data"
        count = self.sizes["servers"]
        self.servers = [f"n{i}" for i in range(1, count + 1)]
        # One tmpfs for the one server's store, or one per server (data/nats/nN).
        nats = self.data / "nats"
        self.stores = {"n1": nats} if count == 1 else {n: nats / n for n in self.servers}
        self.full: list[str] = []
        """The servers whose store is filled."""
        self.node = f"http://127.0.0.1:{base_port + 1}"
        self.archiver = f"http://127.0.0.1:{base_port + 100}"
        self.nats_url = f"nats://127.0.0.1:{base_port + 200}"
        self.monitors = {
            n: f"http://127.0.0.1:{base_port + 220 + i}" for i, n in enumerate(self.servers)
        }
        self.http = httpx.Client(timeout=SEND_TIMEOUT)
        self.probe_http = httpx.Client(timeout=3.0)
        self.t0 = time.monotonic()
        self.phase = "setup"
        self.sends: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.phases: list[dict[str, Any]] = []
        self.acked: dict[str, int] = {}
        self.up: subprocess.Popen[bytes] | None = None
        self.restarted_nats: dict[str, subprocess.Popen[bytes]] = {}
        self.mounted: list[Path] = []
        self._stop_probe = threading.Event()
        self._prober: threading.Thread | None = None
        self._lock = threading.Lock()
        self.logs: dict[str, LogWatch] = {}
        self.result: dict[str, Any] = {"scenario": scenario, "sizes": self.sizes}

    # ---------------------------------------------------------------- helpers

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def say(self, text: str) -> None:
        print(f"[{self.now():7.1f}s] {text}", flush=True)

    def disk(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, path in self.stores.items():
            usage = shutil.disk_usage(path)
            out[name] = {"size": usage.total, "used": usage.used, "free": usage.free}
        return out

    def stream_dirs(self) -> dict[str, dict[str, int]]:
        """The streams' directories on each server's store, and their bytes on disk."""
        out: dict[str, dict[str, int]] = {}
        for name in self.servers:
            base = self.data / "nats" / name / "jetstream" / "CHAT" / "streams"
            found = {}
            for stream in sorted(base.glob("*")) if base.is_dir() else []:
                found[stream.name] = sum(f.stat().st_size for f in stream.rglob("*") if f.is_file())
            system = self.data / "nats" / name / "jetstream" / "$SYS"
            if system.is_dir():
                found["$SYS (raft)"] = sum(
                    f.stat().st_size for f in system.rglob("*") if f.is_file()
                )
            out[name] = found
        return out

    def send(self, text_bytes: int) -> dict[str, Any]:
        msg_id = uuid.uuid4().hex
        body = {"channel": "default-channel", "text": "x" * text_bytes, "id": msg_id}
        started = time.monotonic()
        record: dict[str, Any] = {"t": self.now(), "phase": self.phase, "id": msg_id}
        try:
            resp = self.http.post(self.node + "/messages", json=body)
            record["status"] = resp.status_code
            try:
                answer = resp.json()
            except ValueError:
                answer = {"raw": resp.text[:200]}
        except httpx.HTTPError as exc:
            record["status"] = 0
            answer = {"error": "client", "detail": repr(exc)}
        record["latency"] = round(time.monotonic() - started, 4)
        if record["status"] == 201:
            record["seq"] = answer["seq"]
            self.acked[msg_id] = answer["seq"]
        else:
            record["error"] = answer.get("error")
            record["detail"] = str(answer.get("detail", answer))[:300]
        with self._lock:
            self.sends.append(record)
        return record

    def start_phase(self, name: str, note: str = "") -> None:
        self.phase = name
        self.phases.append(
            {
                "name": name,
                "t": self.now(),
                "note": note,
                "disk": self.disk(),
                "stream_dirs": self.stream_dirs(),
            }
        )
        self.say(f"== phase {name}: {note}; streams on disk {self.phases[-1]['stream_dirs']}")

    def report_phase(self) -> None:
        """Print what this phase's sends got, and the new log lines, grouped."""
        sends = [s for s in self.sends if s["phase"] == self.phase]
        outcomes: Counter[str] = Counter()
        latencies: dict[str, list[float]] = {}
        for s in sends:
            key = f"{s['status']} {s.get('error') or ''}".strip()
            outcomes[key] += 1
            latencies.setdefault(key, []).append(s["latency"])
        for key, count in outcomes.items():
            lat = latencies[key]
            self.say(
                f"   sends {key}: {count}, latency min {min(lat):.3f} median "
                f"{statistics.median(lat):.3f} max {max(lat):.3f} s"
            )
        details = Counter(
            f"{s['status']} {s.get('error')}: {s.get('detail')}"
            for s in sends
            if s["status"] != 201
        )
        for detail, count in details.most_common(4):
            self.say(f"   x{count} {detail}")
        phase = self.phases[-1]
        phase["sends"] = dict(outcomes)
        for name, watch in self.logs.items():
            lines = watch.new_lines()
            groups: Counter[str] = Counter()
            first: dict[str, str] = {}
            for line in lines:
                if name == "node-1" and not re.search(r"WARN|ERROR|CRIT|Traceback|error", line):
                    continue
                key = log_key(line)
                groups[key] += 1
                first.setdefault(key, line)
            phase[f"{name} log"] = [
                {"count": c, "line": first[k][:600]} for k, c in groups.most_common()
            ]
            for key, count in groups.most_common(12):
                self.say(f"   {name} log x{count}: {first[key][:400]}")

    # ---------------------------------------------------------------- probing

    def probe_once(self) -> dict[str, Any]:
        sample: dict[str, Any] = {"t": self.now(), "phase": self.phase}
        get = self.probe_http.get

        def timed(key: str, url: str) -> httpx.Response | None:
            started = time.monotonic()
            try:
                resp = get(url)
            except httpx.HTTPError as exc:
                sample[key] = {"error": repr(exc)[:120]}
                return None
            sample[key] = {"status": resp.status_code, "s": round(time.monotonic() - started, 3)}
            return resp

        resp = timed("readyz", self.node + "/readyz")
        if resp is not None:
            with contextlib.suppress(ValueError):
                body = resp.json()
                sample["readyz"].update(
                    {k: body.get(k) for k in ("log_full", "connected", "applied", "log_usage")}
                )
        resp = timed("metrics", self.node + "/metrics")
        if resp is not None and resp.status_code == 200:
            found = {}
            for line in resp.text.splitlines():
                m = INTERESTING_METRICS.match(line)
                if m:
                    found[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            sample["metrics"] = found
        timed("node_read", self.node + "/messages?limit=1")
        resp = timed("archiver_read", self.archiver + "/messages/default-channel?limit=1")
        if resp is not None and resp.status_code != 200:
            sample["archiver_read"]["body"] = resp.text[:200]
        for name, monitor in self.monitors.items():
            # The chart probes nats-server with the two variants (liveness, readiness).
            for key, query in (
                ("healthz", ""),
                ("healthz_js_enabled_only", "?js-enabled-only=true"),
                ("healthz_js_server_only", "?js-server-only=true"),
            ):
                resp = timed(f"{name}_{key}", monitor + "/healthz" + query)
                if resp is not None and resp.status_code != 200:
                    sample[f"{name}_{key}"]["body"] = resp.text[:160]
            resp = timed(f"{name}_jsz", monitor + "/jsz")
            if resp is not None and resp.status_code == 200:
                with contextlib.suppress(ValueError):
                    jsz = resp.json()
                    sample[f"{name}_jsz"].update({"disabled": jsz.get("disabled", False)})
        with contextlib.suppress(OSError):
            sample["disk"] = self.disk()
        return sample

    def _probe_loop(self) -> None:
        while not self._stop_probe.is_set():
            sample = self.probe_once()
            with self._lock:
                self.samples.append(sample)
            self._stop_probe.wait(1.0)

    def summary_of_samples(self, phase: str) -> dict[str, Counter[str]]:
        """For one phase: how often each probed value was seen."""
        seen: dict[str, Counter[str]] = {}
        with self._lock:
            samples = [s for s in self.samples if s["phase"] == phase]
        for s in samples:
            for key in ["readyz", "node_read", "archiver_read"] + [
                f"{n}_{k}"
                for n in self.servers
                for k in ("healthz", "healthz_js_enabled_only", "healthz_js_server_only", "jsz")
            ]:
                v = s.get(key, {})
                shown = {k: v[k] for k in v if k not in ("s", "applied", "storage")}
                seen.setdefault(key, Counter())[json.dumps(shown, sort_keys=True)[:220]] += 1
            for name, value in s.get("metrics", {}).items():
                if "resets" in name:
                    continue
                seen.setdefault(name, Counter())[str(value)] += 1
        return seen

    def print_samples(self) -> None:
        seen = self.summary_of_samples(self.phase)
        self.phases[-1]["probed"] = {k: dict(v) for k, v in seen.items()}
        for key, values in seen.items():
            shown = ", ".join(f"{v} x{c}" for v, c in values.most_common(4))
            self.say(f"   probe {key}: {shown}")
        slow = []
        with self._lock:
            for s in self.samples:
                if s["phase"] == self.phase:
                    for key in ("readyz", "node_read", "archiver_read"):
                        if s.get(key, {}).get("s", 0) > 0.5:
                            slow.append(f"{key} {s[key].get('s')}s")
        if slow:
            self.say(f"   slow probes: {Counter(x.split()[0] for x in slow)}; e.g. {slow[:3]}")

    # ---------------------------------------------------------------- cluster

    def setup(self) -> None:
        size = self.sizes["tmpfs"]
        for path in self.stores.values():
            path.mkdir(parents=True)
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True
            )
            self.mounted.append(path)
            self.say(f"tmpfs {size // MiB} MiB at {path}")
        self.say(f"logs in {self.data / 'logs'}")
        out = (self.work / "up.out").open("wb")
        self.up = subprocess.Popen(
            [
                sys.executable, "-m", "chat_cluster", "up", "--nodes", "1",
                "--base-port", str(self.base_port), "--data-dir", str(self.data),
                "--store-bytes", str(self.sizes["store"]),
                "--nats-cluster", str(len(self.servers)),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
        )  # fmt: skip
        deadline = time.monotonic() + UP_TIMEOUT
        while time.monotonic() < deadline:
            if self.up.poll() is not None:
                raise RuntimeError(f"up exited: {(self.work / 'up.out').read_text()[-2000:]}")
            if (self.data / "cluster.json").exists():
                with contextlib.suppress(httpx.HTTPError):
                    if self.probe_http.get(self.node + "/readyz").status_code == 200:
                        break
            time.sleep(0.2)
        else:
            raise RuntimeError("cluster not ready in time")
        for name in self.servers:
            self.logs[name] = LogWatch(self.data / "logs" / f"{name}.log")
        self.logs["node-1"] = LogWatch(self.data / "logs" / "node-1.log")
        conf = (self.data / "logs" / "n1.conf").read_text()
        self.result["nats_conf_jetstream"] = re.findall(
            r"(max_file\w*:? \S+|sync_interval.*)", conf
        )
        self.result["stream"] = self.stream_info()
        self.say(f"cluster up; stream {self.result['stream']}")
        self._prober = threading.Thread(target=self._probe_loop, daemon=True)
        self._prober.start()

    def stream_info(self) -> dict[str, Any]:
        """The CHAT stream as each server's monitor shows it (leader, replicas, state)."""
        out: dict[str, Any] = {}
        for name, monitor in self.monitors.items():
            try:
                jsz = self.probe_http.get(monitor + "/jsz?streams=true&config=true").json()
            except (httpx.HTTPError, ValueError) as exc:
                out[name] = {"error": repr(exc)[:120]}
                continue
            mine: dict[str, Any] = {"disabled": jsz.get("disabled", False)}
            for account in jsz.get("account_details", []):
                for stream in account.get("stream_detail", []):
                    if stream["name"] == "CHAT":
                        state, cluster = stream["state"], stream.get("cluster", {})
                        mine.update(
                            max_bytes=stream["config"].get("max_bytes"),
                            bytes=state.get("bytes"),
                            last_seq=state.get("last_seq"),
                            leader=cluster.get("leader"),
                            replicas={
                                r["name"]: {k: r.get(k) for k in ("current", "offline", "lag")}
                                for r in cluster.get("replicas", [])
                            },
                        )
            out[name] = mine
        return out

    def leader(self) -> str:
        for info in self.stream_info().values():
            if info.get("leader"):
                return str(info["leader"])
        return "n1"

    def healthy(self, name: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.probe_http.get(self.monitors[name] + "/healthz").status_code == 200
        return False

    def nats_pid(self, name: str) -> int:
        state = json.loads((self.data / "cluster.json").read_text())
        return int(next(s["pid"] for s in state["nats"] if s["name"] == name))

    def restart_nats(self, names: list[str]) -> None:
        """Those nats-servers alone: SIGTERM, wait, start the same binary with the same
        config (``up`` never restarts NATS; the nodes and the archiver keep running)."""
        for name in names:
            if name in self.restarted_nats:
                terminate(self.restarted_nats.pop(name), 15)
                continue
            pid = self.nats_pid(name)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                    break  # exited; `up` reaps it later
                time.sleep(0.1)
        for name in names:
            log = (self.data / "logs" / f"{name}.log").open("ab")
            self.restarted_nats[name] = subprocess.Popen(
                [str(resolve_binary()), "-c", str(self.data / "logs" / f"{name}.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + 60
        for name in names:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if self.probe_http.get(self.monitors[name] + "/healthz").status_code == 200:
                        self.say(f"{name} restarted, /healthz 200")
                        break
                time.sleep(0.1)
            else:
                self.say(f"{name} restarted but /healthz not 200 within 60 s")

    def fill_disk(self, name: str) -> int:
        """Fill that server's tmpfs to 100% with one file; returns its size."""
        path = self.stores[name] / "filler"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        written = 0
        try:
            free = shutil.disk_usage(self.stores[name]).free
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, free)
                written = free
            chunk = b"\0" * 4096
            while True:  # whatever fallocate left, a page at a time
                try:
                    written += os.pwrite(fd, chunk, written)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        finally:
            os.close(fd)
        return written

    def cleanup(self) -> None:
        self._stop_probe.set()
        if self._prober is not None:
            self._prober.join(10)
        if self.up is not None and self.up.poll() is None:
            done = subprocess.run(
                [sys.executable, "-m", "chat_cluster", "down", "--data-dir", str(self.data)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=90,
            )
            self.say(f"down: {done.stdout.strip() or done.stderr.strip()}")
            if self.up.poll() is None:
                terminate(self.up, 30)
        for proc in self.restarted_nats.values():
            terminate(proc, 15)
        for path in self.mounted:
            for attempt in range(10):
                if subprocess.run(["umount", str(path)], check=False).returncode == 0:
                    break
                time.sleep(0.5 * (attempt + 1))
            else:
                subprocess.run(["umount", "-l", str(path)], check=False)
        self.mounted = []
        self.http.close()
        self.probe_http.close()
        self.say(f"cleaned up; logs kept in {self.data / 'logs'}")

    # ---------------------------------------------------------------- phases

    def baseline(self, count: int = 20, size: int = 1024) -> None:
        self.start_phase("baseline", f"{count} sends of {size} B")
        for _ in range(count):
            self.send(size)
        self.report_phase()
        self.print_samples()

    def fill_by_sending(self, size: int) -> None:
        self.start_phase("fill-by-sending", f"sends of {size} B until one is refused")
        deadline = time.monotonic() + FILL_SECONDS
        for i in range(MAX_FILL_SENDS):
            record = self.send(size)
            if record["status"] != 201:
                self.say(f"   first refusal after {i} sends: {record}")
                break
            if time.monotonic() > deadline:
                break
        self.result["stream_when_refused"] = self.stream_info()
        self.report_phase()
        self.print_samples()

    def keep_sending(self, name: str, note: str, seconds: float, size: int) -> None:
        self.start_phase(name, note)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.send(size)
            time.sleep(0.5)
        self.result[f"stream_{name}"] = self.stream_info()
        self.report_phase()
        self.print_samples()

    def until_stored(self, name: str, note: str, seconds: float, size: int) -> float | None:
        """Send until one is stored (then 5 more); the seconds from the phase's start."""
        self.start_phase(name, note)
        started = time.monotonic()
        first: float | None = None
        while time.monotonic() - started < seconds:
            record = self.send(size)
            if record["status"] == 201:
                first = round(time.monotonic() - started, 2)
                break
            time.sleep(0.5)
        if first is not None:
            self.say(f"   first send stored {first} s after the phase started")
            for _ in range(5):
                self.send(size)
        else:
            self.say(f"   no send stored within {seconds:.0f} s")
        self.phases[-1]["first_stored_after"] = first
        time.sleep(2)  # let the prober see the state after
        self.report_phase()
        self.print_samples()
        return first

    def check_nothing_lost(self) -> None:
        self.start_phase("check", "every acknowledged (seq, id) served by the node and archiver")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self.probe_http.get(self.node + "/readyz").status_code == 200:
                    break
            time.sleep(0.5)
        check: dict[str, Any] = {"acked": len(self.acked)}
        for name, url in (
            ("node", self.node + "/messages?channel=default-channel"),
            ("archiver", self.archiver + "/messages/default-channel?"),
        ):
            served: dict[str, int] = {}
            after = 0
            while True:
                resp = self.http.get(f"{url}&after={after}&limit=1000", timeout=30)
                page = resp.json()
                if resp.status_code != 200:
                    check[f"{name} error"] = page
                    self.say(f"   {name} answers {resp.status_code} {page}")
                    break
                for m in page["messages"]:
                    served[m["id"]] = m["seq"]
                if not page["messages"]:
                    break
                after = page["messages"][-1]["seq"]
            missing = [i for i, seq in self.acked.items() if served.get(i) != seq]
            refused = [s["id"] for s in self.sends if s["status"] != 201]
            stored_anyway = [i for i in refused if i in served]
            check[name] = {
                "served": len(served),
                "acked_missing_or_moved": len(missing),
                "refused_but_stored": len(stored_anyway),
                "refused": len(refused),
            }
            self.say(f"   {name}: {check[name]}")
        done = subprocess.run(
            [sys.executable, "-m", "chat_cluster", "verify", "--data-dir", str(self.data)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        check["verify"] = {"rc": done.returncode, "out": (done.stdout + done.stderr)[-800:]}
        self.say(f"   chat-cluster verify: rc {done.returncode}: {done.stdout.strip()[-300:]}")
        self.result["check"] = check
        self.report_phase()

    def raise_limit(self) -> None:
        """What the 507 detail tells an operator: ``ensure-stream --log-max-bytes``."""
        info = next(iter(self.stream_info().values()))
        limit = int(info.get("max_bytes") or 0)
        raised = limit + 256 * 1024
        self.start_phase("raise", f"ensure-stream --log-max-bytes {raised} (was {limit})")
        done = subprocess.run(
            [
                sys.executable, "-m", "chat_cluster", "ensure-stream", "--timeout", "20",
                "--nats-url", self.nats_url, "--log-max-bytes", str(raised),
            ],
            cwd=ROOT,
            env={**os.environ, "NATS_CREDS": str(self.data / "creds" / "admin.nk")},
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        out = (done.stdout + done.stderr).strip().splitlines()
        self.phases[-1]["ensure-stream"] = {"rc": done.returncode, "out": out[-3:]}
        self.say(f"   ensure-stream rc {done.returncode}: {out[-1][:300] if out else ''}")
        self.report_phase()

    def recover_then_restart(self, freed_note: str, size: int) -> None:
        first = self.until_stored("freed", freed_note, RECOVER_SECONDS, size)
        self.result["recovered_without_restart"] = first is not None
        if first is None and len(self.servers) == 1:
            # Does the operator's 507 remedy (raise the byte limit) unstick the stream?
            self.raise_limit()
            first = self.until_stored("after-raise", "sends after the raise", 15, size)
            self.result["recovered_by_raising_limit"] = first is not None
        # A server whose JetStream stays off (or unhealthy) after the space came back is
        # restarted even when writes work (an R3 stream then runs on 2 of 3 replicas).
        names = self.full or self.servers
        unhealthy = [n for n in names if not self.healthy(n)]
        self.result["unhealthy_after_freeing"] = unhealthy
        if first is None or unhealthy:
            names = names if first is None else unhealthy
            if len(self.servers) > 1:
                self.copy_store(names[0])
            self.start_phase("restart-nats", f"SIGTERM {names}, start again")
            self.restart_nats(names)
            self.report_phase()
            self.until_stored(
                "after-restart", "sends after nats-server restarted", RECOVER_SECONDS, size
            )
            time.sleep(3)  # an R3 replica catching up

    def copy_store(self, name: str) -> None:
        """A copy of that server's store, taken before it restarts (what an operator could
        do first): ``salvage`` later shows whether the stream in it can still be read."""
        target = self.work / "salvage" / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.data / "nats" / name, target, ignore=shutil.ignore_patterns("filler"))
        self.say(f"   copied {name}'s store to {target} before restarting")

    def salvage(self) -> None:
        """A standalone nats-server (no cluster block, other ports) on the copy of a store:
        does it recover the CHAT stream that the cluster deleted?"""
        copies = sorted((self.work / "salvage").glob("n*"))
        if not copies:
            return
        copy = copies[0]
        self.start_phase("salvage", f"standalone nats-server on the copy {copy}")
        conf = (self.data / "logs" / f"{copy.name}.conf").read_text()
        conf = re.sub(r"(?ms)^cluster \{.*?^\}\n?", "", conf)
        port, monitor = self.base_port + 250, self.base_port + 251
        conf = re.sub(r"(?m)^listen: .*$", f"listen: 127.0.0.1:{port}", conf)
        conf = re.sub(r"(?m)^http: .*$", f"http: 127.0.0.1:{monitor}", conf)
        conf = re.sub(r'store_dir: "[^"]*"', f'store_dir: "{copy}"', conf)
        conf = conf.replace(f"server_name: {copy.name}", "server_name: salvage")
        # Standalone, the account's storage (3 copies' worth) must fit in the server's.
        conf = re.sub(r"max_file_store: \d+", f"max_file_store: {1024 * MiB}", conf)
        path = self.work / "salvage.conf"
        path.write_text(conf)
        path.chmod(0o600)
        with (self.work / "salvage.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(resolve_binary()), "-c", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        try:
            found: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not found:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    url = f"http://127.0.0.1:{monitor}/jsz?streams=true"
                    for account in self.probe_http.get(url).json().get("account_details", []):
                        for stream in account.get("stream_detail", []):
                            state = stream["state"]
                            found[stream["name"]] = {
                                k: state.get(k) for k in ("messages", "first_seq", "last_seq")
                            }
                time.sleep(0.5)
            self.result["salvage"] = found
            self.say(f"   standalone server on the copy holds: {found or 'no stream'}")
        finally:
            terminate(proc, 15)
        lines = (self.work / "salvage.log").read_text().splitlines()
        self.phases[-1]["salvage log"] = [
            x for x in lines if "WRN" in x or "ERR" in x or "Restored" in x or "stream" in x
        ][:20]
        for line in self.phases[-1]["salvage log"][:8]:
            self.say(f"   salvage log: {line[:300]}")

    def run(self) -> None:
        self.setup()
        self.baseline()
        if self.scenario == "r3-all-k8s":
            # What the chart's liveness probe (js-enabled-only, 3 x 30 s) does: restart
            # the servers while their disks are still full.
            self.full = self.servers
            self.start_phase("fill", f"a file takes every free byte of {self.full}'s store")
            for name in self.full:
                self.fill_disk(name)
            self.report_phase()
            self.keep_sending("full", f"disk at 100% for {FULL_SECONDS:.0f} s", FULL_SECONDS, 2048)
            self.start_phase("restart-while-full", f"SIGTERM {self.full} and start again")
            self.restart_nats(self.full)
            self.report_phase()
            self.keep_sending("full-restarted", "disk still full", FULL_SECONDS, 2048)
            self.say(f"   stream: {self.stream_info()}")
            for name in self.full:
                (self.stores[name] / "filler").unlink()
            self.recover_then_restart(f"filler deleted; disk {self.disk()}", 2048)
            self.say(f"   stream: {self.stream_info()}")
        elif self.scenario in ("disk", "r3-leader", "r3-all"):
            self.full = [self.leader()] if self.scenario == "r3-leader" else self.servers
            self.start_phase("fill", f"a file takes every free byte of {self.full}'s store")
            for name in self.full:
                filled = self.fill_disk(name)
                self.say(f"   {name}: filler {filled} B; disk {self.disk()[name]}")
            self.report_phase()
            self.keep_sending("full", f"disk at 100% for {FULL_SECONDS:.0f} s", FULL_SECONDS, 2048)
            self.say(f"   stream: {self.stream_info()}")
            for name in self.full:
                (self.stores[name] / "filler").unlink()
            self.recover_then_restart(f"filler deleted; disk {self.disk()}", 2048)
            self.say(f"   stream: {self.stream_info()}")
        elif self.scenario in ("self", "r3-self"):
            self.fill_by_sending(4096)
            self.keep_sending("full", f"disk full for {FULL_SECONDS:.0f} s", FULL_SECONDS, 4096)
            self.say(f"   stream: {self.stream_info()}")
            for path in self.stores.values():
                subprocess.run(["mount", "-o", "remount,size=64m", "tmpfs", str(path)], check=True)
            self.recover_then_restart(f"tmpfs grown to 64 MiB; disk {self.disk()}", 4096)
            self.say(f"   stream: {self.stream_info()}")
        else:
            self.fill_by_sending(4096)
            self.keep_sending("full", "10 s more at the byte limit", 10, 4096)
            self.raise_limit()
            self.until_stored("raised", "sends after the limit was raised", 30, 4096)
        self.check_nothing_lost()
        if self.result["check"].get("archiver error"):
            self.salvage()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--base-port", type=int, default=17000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run.py needs root (it mounts a tmpfs)", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    failed = 0
    for scenario in SCENARIOS if args.scenario == "all" else [args.scenario]:
        trial = Trial(scenario, args.base_port)
        print(f"######## scenario {scenario}: {trial.sizes}", flush=True)
        try:
            trial.run()
        except Exception as exc:
            failed += 1
            trial.say(f"FAILED: {exc!r}")
            trial.result["failed"] = repr(exc)
        finally:  # also on Ctrl-C
            trial.cleanup()
            trial.result["phases"] = trial.phases
            out = RESULTS / f"{scenario}.json"
            out.write_text(json.dumps(trial.result, indent=1, default=str) + "\n")
            # Every send and every per-second sample: large, so compressed beside it.
            raw = {"sends": trial.sends, "samples": trial.samples}
            with gzip.open(RESULTS / f"{scenario}.raw.json.gz", "wt") as f:
                json.dump(raw, f, default=str)
            print(f"results: {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
