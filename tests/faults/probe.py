"""A well-behaved client in a process of its own, so that an attack run by the test
process (and its GIL) cannot delay what it measures.

Every 50 ms it asks ``/healthz`` over one keep-alive connection (a load balancer's
health check), and every tenth time it sends a message as a user of its own. On SIGTERM
it writes what it saw as JSON: the latency of each answer, every failure, and every send
the node acknowledged (id and seq), so the test can check that none of them was lost.

    python -m tests.faults.probe BASE_URL TOKEN OUT_JSON
"""

import http.client
import json
import signal
import sys
import time
from types import FrameType
from urllib.parse import urlsplit

INTERVAL = 0.05
TIMEOUT = 15.0
"""More than a node waits for the log's answer to a send (then it answers 503 itself)."""


def main(base: str, token: str, out: str) -> None:
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    parts = urlsplit(base)
    latencies: list[float] = []
    failures: list[str] = []
    """/healthz not answered 200 in time: what the scenarios assert never happens."""
    refused: list[str] = []
    """Sends answered with an error: allowed (the log may be slow under a raw flood), but
    each must be a JSON problem, not a timeout or a 500."""
    acked: list[tuple[str, int]] = []
    reconnects = 0
    conn: http.client.HTTPConnection | None = None
    n = 0
    while not stop:
        started = time.monotonic()
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
            reconnects += 1
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            resp.read()
            took = time.monotonic() - started
            if resp.status == 200:
                latencies.append(took)
                if len(latencies) == 1:
                    open(out + ".ready", "w").close()  # the test starts its attack now
            else:
                failures.append(f"healthz {resp.status} after {took:.3f}s")
            if n % 10 == 0:
                msg_id = f"probe-{n}"
                body = json.dumps({"channel": "probe", "text": f"probe {n}", "id": msg_id})
                headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
                conn.request("POST", "/messages", body, headers)
                resp = conn.getresponse()
                answer = resp.read()
                if resp.status == 201:
                    acked.append((msg_id, json.loads(answer)["seq"]))
                elif resp.status in (429, 503) and answer.startswith(b'{"error":'):
                    refused.append(f"send {resp.status}: {answer[:200]!r}")
                else:
                    failures.append(f"send {resp.status}: {answer[:200]!r}")
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{type(exc).__name__}: {exc} after {time.monotonic() - started:.3f}s")
            conn.close()
            conn = None
        n += 1
        time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))
    with open(out, "w") as f:
        json.dump(
            {
                "latencies": latencies,
                "failures": failures,
                "refused": refused,
                "acked": acked,
                "reconnects": reconnects,
            },
            f,
        )


if __name__ == "__main__":
    main(*sys.argv[1:4])
