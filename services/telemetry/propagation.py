"""W3C trace context in NATS message headers: the send's span is the parent of the apply
span on every node that applies the message."""

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, if one is being recorded."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str) -> context.Context:
    return _propagator.extract({"traceparent": traceparent})
