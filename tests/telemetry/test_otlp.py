"""With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, a node process exports its spans and metrics
over OTLP/HTTP; without it, spans are not even recorded. The collector here is a
test-owned HTTP server on 127.0.0.1 that records what it receives."""

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import PYTHON, NodeProcs, http, wait_until


class Collector:
    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append((self.path, body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> bytes:
        return b"".join(body for p, body in list(self.received) if p == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


def test_a_node_exports_spans_and_metrics_over_otlp(
    procs: NodeProcs, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export spans within 0.1 s
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    node = procs.node("exporting")
    status, _ = http("POST", node.url + "/messages", {"text": "to the collector"})
    assert status == 201
    spans = wait_until(
        lambda: b"chat.apply" in (b := collector.bodies("/v1/traces")) and b,
        what="spans at the collector",
    )
    for name in (b"chat.send", b"chat.publish", b"chat.apply", b"chat.deliver", b"exporting"):
        assert name in spans  # protobuf keeps strings as they are
    # The gauges are exported from the start; the send's histogram from the first export
    # after it.
    metrics = wait_until(
        lambda: b"chat.publish.duration" in (b := collector.bodies("/v1/metrics")) and b,
        what="metrics at the collector",
    )
    assert b"chat.replica.applied_seq" in metrics


@pytest.mark.parametrize(
    ("env", "tracing"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"}, True),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"},
            False,
        ),
    ],
)
def test_spans_are_recorded_only_with_an_otlp_endpoint(env: dict[str, str], tracing: bool) -> None:
    # A fresh process each time: the global TracerProvider can be set only once.
    script = (
        "import json, telemetry; from opentelemetry import trace;"
        f"t = telemetry.start('chat-node', 'n1', {env!r});"
        "span = trace.get_tracer('t').start_span('x');"
        "print(json.dumps([t.tracing, span.is_recording()]))"
    )
    out = subprocess.run(
        [PYTHON, "-c", script], capture_output=True, text=True, timeout=30, env=os.environ
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [tracing, tracing]


def test_spans_buffered_at_sigterm_are_exported_before_exit(
    procs: NodeProcs, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # never on its own in this test
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")
    node = procs.node("stopping")
    assert http("POST", node.url + "/messages", {"text": "just before the end"})[0] == 201
    assert collector.bodies("/v1/traces") == b""  # still buffered in the node
    node.stop(10)  # SIGTERM: the node drains, then flushes its telemetry
    # uvicorn re-raises the SIGTERM once its shutdown (our lifespan included) is done
    assert node.proc is not None and node.proc.returncode in (0, -signal.SIGTERM)
    assert b"chat.publish" in collector.bodies("/v1/traces")
    assert b"chat.replica.applied_seq" in collector.bodies("/v1/metrics")
