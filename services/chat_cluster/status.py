"""``chat-cluster status``: one line per local service, from its /readyz and /metrics."""

import json
import urllib.error
import urllib.request
from pathlib import Path

METRICS = {
    "chat_replica_applied_seq": "applied",
    "chat_replication_lag": "lag",
    "chat_replication_lag_duration_seconds": "lag_s",
    "chat_ws_connections": "conns",
}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def scrape(text: str) -> dict[str, float]:
    """The unlabelled samples of the metrics we show (one series each)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in METRICS:
            values[METRICS[name]] = float(value)
    return values


def rows(cluster_json: Path) -> list[dict[str, str]]:
    state = json.loads(cluster_json.read_text())
    out = []
    for name, service in state["services"].items():
        url = service["url"]
        status, _ = _get(url + "/readyz")
        code, body = _get(url + "/metrics")
        values = scrape(body.decode()) if code == 200 else {}
        row = {
            "service": name,
            "url": url,
            "ready": {200: "ready", 503: "not ready", 0: "down"}.get(status, str(status)),
        }
        for key in ("applied", "lag", "lag_s", "conns"):
            value = values.get(key)
            row[key] = (
                "-" if value is None else f"{value:.3f}" if key == "lag_s" else f"{value:.0f}"
            )
        out.append(row)
    return out


def show(data_dir: str) -> int:
    cluster_json = Path(data_dir) / "cluster.json"
    if not cluster_json.exists():
        print(f"chat-cluster status: no {cluster_json}; is `chat-cluster up` running here?")
        return 1
    table = rows(cluster_json)
    headers = ["service", "url", "ready", "applied", "lag", "lag_s", "conns"]
    widths = {h: max(len(h), *(len(r[h]) for r in table)) for h in headers}
    print("  ".join(h.ljust(widths[h]) for h in headers))
    for row in table:
        print("  ".join(row[h].ljust(widths[h]) for h in headers))
    return 0 if all(r["ready"] == "ready" for r in table) else 3
