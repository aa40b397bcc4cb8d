"""The HTTP side: ``http.server.request.duration`` for every service, server spans when
tracing is on, and the ``/metrics`` route.

Measured (REST sends through one node, 2-min sync): Litestar's OpenTelemetry
middleware, which records the duration plus active-request and body-size
instruments and builds a span even when tracing is off, cut throughput from about
4,400 to 2,500 requests/s. So the duration histogram comes from our own small
middleware, and Litestar's middleware (with its own metrics off) is added only
when a TracerProvider records spans, for the server span and incoming
``traceparent``.
"""

import time
from collections.abc import Callable

from litestar import Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.middleware.base import DefineMiddleware
from litestar.params import FromQuery
from litestar.plugins.opentelemetry import OpenTelemetryConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.metrics import Histogram, NoOpMeterProvider

from servicekit.workers import LOCAL, Worker, merge_metrics
from telemetry.prometheus import CONTENT_TYPE, render
from telemetry.setup import Telemetry

QUIET = frozenset({"/metrics", "/healthz", "/readyz"})
"""Scrapes and probes: every few seconds per pod, no span or duration worth keeping."""

# OpenTelemetry's advisory boundaries for http.server.request.duration.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def _request_duration(histogram: Histogram) -> Callable[[ASGIApp], ASGIApp]:
    def wrap(app: ASGIApp) -> ASGIApp:
        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP or scope["path"] in QUIET:
                await app(scope, receive, send)
                return
            status = 500  # unless the app starts a response

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            started = time.perf_counter()
            try:
                await app(scope, receive, send_and_note)
            finally:
                histogram.record(
                    time.perf_counter() - started,
                    {
                        "http.request.method": scope["method"],
                        # set by Litestar's router: middleware runs after routing
                        "http.route": scope.get("path_template", ""),
                        "http.response.status_code": status,
                    },
                )

        return measured

    return wrap


def middleware(telemetry: Telemetry) -> list[DefineMiddleware]:
    histogram = telemetry.meter("http").create_histogram(
        "http.server.request.duration",
        unit="s",
        description="Duration of HTTP server requests",
        explicit_bucket_boundaries_advisory=BUCKETS,
    )
    stack = [DefineMiddleware(_request_duration(histogram))]
    if telemetry.tracing:
        # HTTP only: the WebSocket scope would get a span per frame; WebSocket sends have
        # their own spans (chat.send). Its metrics go nowhere: ours above count requests.
        config = OpenTelemetryConfig(
            meter_provider=NoOpMeterProvider(),
            scopes={ScopeType.HTTP},
            exclude=sorted(QUIET),
            exclude_spans=["receive", "send"],
        )
        stack.append(config.middleware)
    return stack


@get("/metrics", include_in_schema=False)
async def metrics(state: State, worker: FromQuery[str | None] = None) -> Response[str]:
    """With ``--workers``, every worker's metrics, each sample labelled with its worker.
    ``?worker=self``: this worker's alone (what the others ask)."""
    telemetry: Telemetry = state.telemetry
    workers: Worker | None = state.get("worker")
    if workers is None:
        return Response(render(telemetry.reader.get_metrics_data()), media_type=CONTENT_TYPE)
    own = render(telemetry.reader.get_metrics_data(), (workers.label,))
    if worker == LOCAL:
        return Response(own, media_type=CONTENT_TYPE)
    answers = await workers.ask_others(f"/metrics?worker={LOCAL}")
    others = [body.decode() for body in answers.values() if body is not None]
    missing = "".join(f"# worker {i} did not answer\n" for i, b in answers.items() if b is None)
    return Response(merge_metrics([own, *others]) + missing, media_type=CONTENT_TYPE)
