"""Connection limits below the app: a cap on open connections, and deadlines for a
request's headers and body.

uvicorn has neither: a client that opens a socket and never finishes its headers holds
it for ever (one stayed 130 s; 20,000 of them exhausted a node's file descriptors and
its accept loop went quiet). Our protocol class is uvicorn's HTTP protocol with three
additions: a connection over ``MAX_CONNECTIONS`` is answered 503 and closed at once (the
accept loop keeps running: we stay below the process's descriptor limit), and a sweep
once a second closes connections whose headers (``HEADER_TIMEOUT``) or body
(``READ_TIMEOUT``) have not arrived in time. The sweep costs nothing per request but a
timestamp; a timer per request would cost a handle each.

A WebSocket leaves this class at its upgrade; it still counts towards the cap (uvicorn
keeps every protocol in one set), and its own limits are the chat node's.
"""

import asyncio
import logging
import resource
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from options import non_negative_float, non_negative_int, setting
from servicekit.shapes import Problem

log = logging.getLogger("servicekit.connections")

RESERVED_FDS = 256
"""Descriptors kept for everything but client sockets: NATS, snapshots, logs, the
listening socket. The cap is lowered to fit under the process's limit with these."""


@dataclass(frozen=True)
class ConnectionSettings:
    max_connections: int = setting(
        10_000, flag="--max-connections", env="MAX_CONNECTIONS", parse=non_negative_int,
        help="open connections (HTTP and WebSocket) this process accepts; beyond it 503 "
        "too_many_connections and the socket is closed at once; lowered to fit the "
        "process's file descriptor limit; 0: only that limit",
    )  # fmt: skip
    header_timeout: float = setting(
        10.0, flag="--header-timeout", env="HEADER_TIMEOUT", parse=non_negative_float,
        help="seconds a client has to send a request's headers, from connecting or from "
        "the previous response; then 408 and the connection is closed; 0: no limit",
    )  # fmt: skip
    read_timeout: float = setting(
        30.0, flag="--read-timeout", env="READ_TIMEOUT", parse=non_negative_float,
        help="seconds a client has to send a request's body after its headers; then the "
        "connection is closed; 0: no limit",
    )  # fmt: skip


def _answer(status: int, reason: str, code: str, detail: str) -> bytes:
    body = msgspec.json.encode(Problem(error=code, detail=detail))
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


def descriptor_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (Debian starts
    processes at 1,024 of a hard 1,048,576), and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class Guard:
    """The limits of one server process, and what they refused (``refused[reason]``,
    read by the metrics)."""

    def __init__(self, settings: ConnectionSettings, refused: Counter[str] | None = None) -> None:
        self.settings = settings
        self.refused: Counter[str] = refused if refused is not None else Counter()
        fit = max(descriptor_limit() - RESERVED_FDS, 1)
        cap = settings.max_connections or fit
        if cap > fit:
            log.warning(
                "MAX_CONNECTIONS %d is above what the open-file limit allows; using %d",
                cap, fit,
            )  # fmt: skip
            cap = fit
        self.max_connections = cap
        self._too_many = _answer(
            503, "Service Unavailable", "too_many_connections",
            f"this server holds {cap} connections (MAX_CONNECTIONS); retry or use another",
        )  # fmt: skip
        self._too_slow = _answer(
            408, "Request Timeout", "header_timeout",
            f"request headers did not arrive within {settings.header_timeout:g}s (HEADER_TIMEOUT)",
        )  # fmt: skip

    def protocol(self) -> type[HttpToolsProtocol]:
        """uvicorn's HTTP protocol class, with this guard's limits."""
        guard = self

        class GuardedHttp(HttpToolsProtocol):
            # The deadline the sweep checks: "headers" or "body" since ``since``; None while
            # the app holds the request (its time is not the client's).
            waiting_for: str | None = None
            since = 0.0

            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                if len(self.connections) > guard.max_connections:
                    guard.refused["connections"] += 1
                    transport.write(guard._too_many)
                    transport.close()
                    return
                self.waiting_for, self.since = "headers", time.monotonic()

            def on_headers_complete(self) -> None:
                self.waiting_for, self.since = "body", time.monotonic()
                super().on_headers_complete()

            def on_message_complete(self) -> None:
                self.waiting_for = None
                super().on_message_complete()

            def on_response_complete(self) -> None:
                super().on_response_complete()  # may start a pipelined request's cycle
                cycle = self.cycle
                if cycle is not None and not cycle.response_complete:
                    # A pipelined request runs: no deadline once it was read whole; while
                    # its body still arrives, the one set at its headers stands.
                    if not cycle.more_body:
                        self.waiting_for = None
                else:
                    # The next request's headers are due from now (uvicorn's keep-alive
                    # timer closes an idle connection sooner; this covers a partial one).
                    self.waiting_for, self.since = "headers", time.monotonic()

            def handle_websocket_upgrade(self) -> None:
                self.waiting_for = None
                super().handle_websocket_upgrade()

            def overdue(self, now: float) -> None:
                waiting = self.waiting_for
                if waiting is None or self.transport.is_closing():
                    return
                limit = guard.settings.header_timeout
                if waiting == "body":
                    limit = guard.settings.read_timeout
                if limit <= 0 or now - self.since < limit:
                    return
                self.waiting_for = None
                if waiting == "headers":
                    guard.refused["header_timeout"] += 1
                    self.transport.write(guard._too_slow)
                else:
                    # The app is reading this body: closing tells it the client is gone.
                    guard.refused["read_timeout"] += 1
                self.transport.close()

        return GuardedHttp

    async def sweep(self, state: ServerState, interval: float = 1.0) -> None:
        """Close connections past their deadlines, once every ``interval`` seconds."""
        if not (self.settings.header_timeout or self.settings.read_timeout):
            return
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            connections: Iterable[Any] = list(state.connections)
            for protocol in connections:
                overdue = getattr(protocol, "overdue", None)
                if overdue is not None:
                    overdue(now)
