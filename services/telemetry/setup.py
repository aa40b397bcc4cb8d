"""Traces and metrics, configured once at start from the standard ``OTEL_*`` variables.

- Metrics: every service has its own MeterProvider with a pull reader that
  ``/metrics`` renders (several services can live in one process, as in tests),
  plus an OTLP exporter when an OTLP endpoint is configured.
- Traces: only when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``
  or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, and ``OTEL_TRACES_EXPORTER`` is not
  ``none``) is a TracerProvider installed; otherwise the API's no-op tracer makes
  every span a cheap non-recording one and nothing is exported. A provider that
  someone installed before us (tests, an embedding app) is left alone.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import Resource

log = logging.getLogger("telemetry")


@dataclass
class Telemetry:
    meter_provider: MeterProvider
    reader: InMemoryMetricReader
    tracing: bool
    """True when spans are recorded by a real TracerProvider (ours or one set before)."""

    def meter(self, name: str) -> Meter:
        return self.meter_provider.get_meter(name)

    def shutdown(self) -> None:
        """At process exit: export what is buffered (the last metrics and spans)."""
        self.meter_provider.shutdown(timeout_millis=2000)
        provider = trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if self.tracing and flush is not None:
            flush(2000)  # not shutdown: the provider is global and may outlive this app


def _otlp_wanted(env: Mapping[str, str], signal: str) -> bool:
    if env.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def start(service: str, instance: str, env: Mapping[str, str]) -> Telemetry:
    service = env.get("OTEL_SERVICE_NAME") or service
    resource = Resource.create({"service.name": service, "service.instance.id": instance})
    reader = InMemoryMetricReader()
    readers: list[MetricReader] = [reader]
    if _otlp_wanted(env, "metrics"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        log.info("exporting metrics over OTLP")
    provider = MeterProvider(metric_readers=readers, resource=resource)

    tracing = _installed(trace.get_tracer_provider())
    if not tracing and _otlp_wanted(env, "traces"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        tracing = True
        log.info("exporting traces over OTLP")
    return Telemetry(meter_provider=provider, reader=reader, tracing=tracing)


def _installed(provider: trace.TracerProvider) -> bool:
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
