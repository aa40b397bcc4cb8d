"""OpenTelemetry for every service: one place that sets up traces and metrics, renders
metrics for Prometheus, and moves trace context through NATS message headers."""

from telemetry.prometheus import render
from telemetry.propagation import context_of, current_traceparent
from telemetry.setup import Telemetry, start

__all__ = ["Telemetry", "context_of", "current_traceparent", "render", "start"]
