"""Logging for a service process: one line per event that matters, tagged with the service."""

import json
import logging
import sys
import time

from opentelemetry import trace

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(raw: str) -> str:
    """Parses ``LOG_LEVEL``."""
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


FIELDS = ("seq", "epoch", "reason", "channel")
"""Extra fields a log call may pass (``extra={"seq": ...}``); copied into the JSON line."""


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str, node_id: str | None) -> None:
        super().__init__()
        self._service = service
        self._node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self._node_id:
            line["node_id"] = self._node_id
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(service: str, level: str = "INFO", node_id: str | None = None) -> None:
    """JSON lines when stderr is not a terminal (containers, files), plain text otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        who = f"{service} {node_id}" if node_id else service
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {who} %(levelname)s %(name)s: %(message)s")
        )
    else:
        handler.setFormatter(_JsonFormatter(service, node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
