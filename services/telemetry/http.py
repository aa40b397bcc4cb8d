"""The HTTP side: Litestar's OpenTelemetry middleware (server spans, incoming
``traceparent``, ``http.server.request.duration``) and the ``/metrics`` route."""

from litestar import Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.middleware.base import DefineMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig

from telemetry.prometheus import CONTENT_TYPE, render
from telemetry.setup import Telemetry

QUIET = ["/metrics", "/healthz", "/readyz"]
"""Scrapes and probes: every few seconds per pod, no span or duration worth keeping."""


def middleware(telemetry: Telemetry) -> DefineMiddleware:
    # HTTP only: the WebSocket scope would get a span per frame; WebSocket sends have
    # their own spans (chat.send).
    config = OpenTelemetryConfig(
        meter_provider=telemetry.meter_provider,
        scopes={ScopeType.HTTP},
        exclude=QUIET,
    )
    return config.middleware


@get("/metrics", sync_to_thread=False, include_in_schema=False)
def metrics(state: State) -> Response[str]:
    telemetry: Telemetry = state.telemetry
    return Response(render(telemetry.reader.get_metrics_data()), media_type=CONTENT_TYPE)
