"""OpenTelemetry metrics as Prometheus text (exposition format 0.0.4), for ``/metrics``.

Names follow OpenTelemetry's Prometheus compatibility rules: dots become
underscores, the unit becomes a suffix (``s`` -> ``_seconds``, ``By`` -> ``_bytes``;
annotations such as ``{message}`` add nothing), and monotonic sums get ``_total``.
"""

import math
import re
from collections.abc import Iterable, Sequence

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.util.types import Attributes

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "%": "percent"}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def _name(metric: Metric, counter: bool) -> str:
    name = _INVALID.sub("_", metric.name)
    unit = _UNITS.get(metric.unit or "")
    if unit and not name.endswith(f"_{unit}"):
        name = f"{name}_{unit}"
    if counter and not name.endswith("_total"):
        name += "_total"
    return name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attributes: Attributes, extra: Sequence[tuple[str, str]] = ()) -> str:
    pairs = [(_INVALID.sub("_", k), str(v)) for k, v in sorted((attributes or {}).items())]
    pairs += extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _lines(metric: Metric, extra: Sequence[tuple[str, str]]) -> Iterable[str]:
    data = metric.data
    if isinstance(data, Sum | Gauge):
        counter = isinstance(data, Sum) and data.is_monotonic
        name = _name(metric, counter)
        yield f"# HELP {name} {_escape(metric.description or metric.name)}"
        yield f"# TYPE {name} {'counter' if counter else 'gauge'}"
        for number in data.data_points:
            assert isinstance(number, NumberDataPoint)
            yield f"{name}{_labels(number.attributes, extra)} {_number(number.value)}"
    elif isinstance(data, Histogram):
        name = _name(metric, counter=False)
        yield f"# HELP {name} {_escape(metric.description or metric.name)}"
        yield f"# TYPE {name} histogram"
        for point in data.data_points:
            assert isinstance(point, HistogramDataPoint)
            cumulative = 0
            bounds = [*point.explicit_bounds, math.inf]
            for bound, count in zip(bounds, point.bucket_counts, strict=True):
                cumulative += count
                le = _number(float(bound))
                yield f"{name}_bucket{_labels(point.attributes, [*extra, ('le', le)])} {cumulative}"
            yield f"{name}_sum{_labels(point.attributes, extra)} {_number(point.sum)}"
            yield f"{name}_count{_labels(point.attributes, extra)} {point.count}"


def render(data: MetricsData | None, extra: Sequence[tuple[str, str]] = ()) -> str:
    """``extra``: labels added to every sample (``worker`` with ``--workers``)."""
    lines: list[str] = []
    seen: set[str] = set()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name in seen:
                    continue  # one family per name, even if two meters define it
                seen.add(metric.name)
                lines.extend(_lines(metric, extra))
    return "\n".join(lines) + "\n"
