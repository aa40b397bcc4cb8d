"""Connection limits below the app: a cap on open connections, and deadlines for a
request's headers and body.

uvicorn has none of these: a client that opens a socket and never finishes its headers
holds it for ever (one stayed 130 s; 20,000 of them exhausted a node's file descriptors
and its accept loop went quiet). Our protocol class is uvicorn's HTTP protocol with:

- a connection over ``MAX_CONNECTIONS``, or over ``MAX_CONNECTIONS_PER_ADDRESS`` from
  one client address, answered 503 at once (the accept loop keeps running: the cap
  stays below the process's descriptor limit);
- at most ``MAX_PIPELINED`` requests queued per connection (uvicorn queues without a
  bound: 400,000 pipelined requests grew a node to 1 GB);
- a sweep once a second that closes connections whose headers (``HEADER_TIMEOUT``) or
  body (``READ_TIMEOUT``) have not arrived in time, and drops those whose client left
  its answers unread for ``WRITE_TIMEOUT`` (they held the app's tasks and the node's
  CPU). The sweep costs nothing per request but a timestamp; a timer per request would
  cost a handle each.

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
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.protocol import State

from options import non_negative_float, non_negative_int, setting
from servicekit.frames import EXTENSION
from servicekit.shapes import Problem

log = logging.getLogger("servicekit.connections")

MAX_HEAD_BYTES = 64 * 1024
"""A request's line and headers (nginx's default buffers hold 32 KiB; tokens are at
most 8 KiB). uvicorn has no cap: 96 MB of headers were read, answered 200, and most of
the memory stayed."""
CONTROL_BURST = 20
CONTROL_RATE = 2.0
"""WebSocket pings and pongs a client may send: a burst, then this many a second
(browsers send none; libraries one every 20 s or so). uvicorn answers every ping at
once, below the app: a flood of them took a node's whole CPU and, with its pongs never
read, 20 MiB a second."""
MAX_PIPELINED = 16
"""Requests one connection may have waiting behind the one being answered."""
MAX_DRAINING = 128
"""Refused connections drained at once; beyond it a refusal closes at once (its client
may see a reset instead of the answer), so that a flood of refused connections cannot
hold the descriptors kept for everything else."""
CLOSE_GRACE = 2.0
"""Seconds a closing connection may take to write what it still holds (or a refused one
to read what its client still sends) before it is aborted."""
RESERVED_FDS = 256
"""Descriptors kept for everything but client sockets: NATS, snapshots, logs, the
listening socket. The cap is lowered to fit under the process's limit with these."""


@dataclass(frozen=True)
class ConnectionSettings:
    max_connections: int = setting(
        10_000, flag="--max-connections", env="MAX_CONNECTIONS", parse=non_negative_int,
        help="open connections (HTTP and WebSocket) this process accepts; beyond it 503 "
        "too_many_connections at once; lowered to fit the process's file descriptor "
        "limit; 0: only that limit",
    )  # fmt: skip
    header_timeout: float = setting(
        10.0, flag="--header-timeout", env="HEADER_TIMEOUT", parse=non_negative_float,
        help="seconds a client has to send a request's headers, from connecting or from "
        "the previous response; then 408 and the connection is closed; 0: no limit",
    )  # fmt: skip
    max_per_address: int = setting(
        1000, flag="--max-connections-per-address", env="MAX_CONNECTIONS_PER_ADDRESS",
        parse=non_negative_int,
        help="HTTP connections one client address may hold open (a WebSocket counts only "
        "until its upgrade); beyond it 503; 0: no limit. Behind a proxy every connection "
        "has the proxy's address: set 0 there and limit clients at the proxy",
    )  # fmt: skip
    write_timeout: float = setting(
        30.0, flag="--write-timeout", env="WRITE_TIMEOUT", parse=non_negative_float,
        help="seconds a client may leave its answers unread once the connection's buffer "
        "is full; then the connection is dropped; 0: no limit",
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
        self._too_many_here = _answer(
            503, "Service Unavailable", "too_many_connections",
            f"this server holds {settings.max_per_address} connections from one address "
            "(MAX_CONNECTIONS_PER_ADDRESS)",
        )  # fmt: skip
        self._pipelined = _answer(
            400, "Bad Request", "too_many_pipelined",
            f"at most {MAX_PIPELINED} requests may wait for their answers on one connection",
        )  # fmt: skip
        self._too_big = _answer(
            431, "Request Header Fields Too Large", "headers_too_large",
            f"a request's line and headers may take {MAX_HEAD_BYTES} bytes",
        )  # fmt: skip
        self.by_address: dict[str, int] = {}
        self.draining = 0
        """Refused connections still being drained (at most MAX_DRAINING)."""
        """Open HTTP connections by client address (WebSockets leave it at their upgrade)."""
        self._too_slow = _answer(
            408, "Request Timeout", "header_timeout",
            f"request headers did not arrive within {settings.header_timeout:g}s (HEADER_TIMEOUT)",
        )  # fmt: skip

    def protocol(self) -> type[HttpToolsProtocol]:
        """uvicorn's HTTP protocol class, with this guard's limits."""
        guard = self
        settings = self.settings

        class GuardedHttp(HttpToolsProtocol):
            # The deadline the sweep checks: "headers" or "body" since ``since``;
            # "refused" (answered 503, closing); None while the app holds the request
            # (its time is not the client's).
            waiting_for: str | None = None
            since = 0.0
            write_paused_at: float | None = None
            """When the transport's buffer went over its high-water mark: a client that
            stops reading its answers holds them (and the app's task) until
            WRITE_TIMEOUT."""
            closing_since: float | None = None
            address: str | None = None
            """Counted in ``guard.by_address`` while set."""
            too_many_pipelined = False
            head_bytes = 0
            too_big = False
            draining = False
            running: Any = None
            """The cycle whose app task runs (uvicorn's ``cycle`` is the newest parsed)."""

            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                now = time.monotonic()
                host = self.client[0] if self.client else None
                per_address = guard.by_address.get(host, 0) if host else 0
                if len(self.connections) > guard.max_connections:
                    self._refuse("connections", guard._too_many, now)
                elif host and settings.max_per_address and per_address >= settings.max_per_address:
                    self._refuse("connections_per_address", guard._too_many_here, now)
                else:
                    if host:
                        self.address = host
                        guard.by_address[host] = per_address + 1
                    self.waiting_for, self.since = "headers", now

            def _refuse(self, reason: str, answer: bytes, now: float) -> None:
                # Answer, then half-close and read what the client still sends: closing
                # with its request unread would reset the connection, and the client
                # would see a reset instead of the 503. The sweep aborts it shortly.
                guard.refused[reason] += 1
                # Nothing else is written after this answer: the request running and those
                # queued behind it (pipelining) are dropped, their app told the client left.
                self.pipeline.clear()
                for cycle in (self.running, self.cycle):
                    if cycle is not None and not cycle.response_complete:
                        cycle.disconnected = True
                        cycle.message_event.set()
                self.transport.write(answer)
                if guard.draining >= MAX_DRAINING or not self.transport.can_write_eof():
                    self.transport.close()
                    return
                self.transport.write_eof()
                guard.draining += 1
                self.draining = True
                self.waiting_for, self.since = "refused", now

            def _uncount(self) -> None:
                if self.address is not None:
                    left = guard.by_address.get(self.address, 1) - 1
                    if left > 0:
                        guard.by_address[self.address] = left
                    else:
                        guard.by_address.pop(self.address, None)
                    self.address = None

            def connection_lost(self, exc: Exception | None) -> None:
                self._uncount()
                if self.draining:
                    self.draining = False
                    guard.draining -= 1
                running = self.running
                if running is not None and not running.response_complete:
                    # uvicorn marks only its newest cycle disconnected; with pipelining
                    # that is a queued one, and the running app then writes to a closed
                    # transport (an ERROR traceback per connection, a log an attacker
                    # could fill).
                    running.disconnected = True
                    running.message_event.set()
                super().connection_lost(exc)

            def _start_asgi_task(self, cycle: Any, app: Any) -> None:
                self.running = cycle
                super()._start_asgi_task(cycle, app)

            def data_received(self, data: bytes) -> None:
                if self.waiting_for != "refused":
                    super().data_received(data)

            def on_message_begin(self) -> None:
                self.head_bytes = 0
                super().on_message_begin()

            def on_url(self, url: bytes) -> None:
                self._count_head(len(url))
                super().on_url(url)

            def on_header(self, name: bytes, value: bytes) -> None:
                self._count_head(len(name) + len(value))
                super().on_header(name, value)

            def _count_head(self, n: int) -> None:
                self.head_bytes += n
                if self.head_bytes > MAX_HEAD_BYTES:
                    self.too_big = True  # stops the parser; answered in send_400_response
                    raise OverflowError("request head too large")

            def on_headers_complete(self) -> None:
                if len(self.pipeline) >= MAX_PIPELINED:
                    # uvicorn queues every pipelined request it has parsed, without a
                    # bound: 400,000 in one connection grew a node to 1 GB. Raising here
                    # stops the parser; uvicorn answers 400 (send_400_response) and closes.
                    self.too_many_pipelined = True
                    raise OverflowError("too many pipelined requests")
                self.waiting_for, self.since = "body", time.monotonic()
                super().on_headers_complete()

            def send_400_response(self, msg: str) -> None:
                # After answers already written (pipelining), ours comes last; what the
                # client still sends is read and dropped until the connection is aborted.
                if self.too_big:
                    self._refuse("headers_too_large", guard._too_big, time.monotonic())
                elif self.too_many_pipelined:
                    self._refuse("pipelined", guard._pipelined, time.monotonic())
                else:
                    super().send_400_response(msg)

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
                # A WebSocket's limits are the app's (sockets per user, the auth timeout).
                self.waiting_for = None
                self._uncount()
                super().handle_websocket_upgrade()

            def pause_writing(self) -> None:
                self.write_paused_at = time.monotonic()
                super().pause_writing()

            def resume_writing(self) -> None:
                self.write_paused_at = None
                super().resume_writing()

            def overdue(self, now: float) -> None:
                if guard.unread(self, now):
                    return
                transport = self.transport
                waiting = self.waiting_for
                if waiting is None:
                    return
                limit = {
                    "headers": settings.header_timeout,
                    "body": settings.read_timeout,
                    "refused": CLOSE_GRACE,
                }[waiting]
                if limit <= 0 or now - self.since < limit:
                    return
                self.waiting_for = None
                if waiting == "refused":
                    transport.abort()
                    return
                if waiting == "headers":
                    guard.refused["header_timeout"] += 1
                    transport.write(guard._too_slow)
                else:
                    # The app is reading this body: closing tells it the client is gone.
                    guard.refused["read_timeout"] += 1
                transport.close()

        return GuardedHttp

    def unread(self, protocol: Any, now: float) -> bool:
        """Drop a connection whose client leaves its answers unread: its buffer full for
        WRITE_TIMEOUT, or closing (waiting for a flush) for CLOSE_GRACE; close() alone
        would wait for ever. True when the connection is going away."""
        transport = protocol.transport
        paused = protocol.write_paused_at
        if paused is not None and 0 < self.settings.write_timeout <= now - paused:
            self.refused["write_timeout"] += 1
            transport.abort()
            return True
        if not transport.is_closing():
            return False
        if protocol.closing_since is None:
            protocol.closing_since = now
        elif now - protocol.closing_since >= CLOSE_GRACE:
            self.refused["write_timeout"] += 1
            transport.abort()
        return True

    def websocket_protocol(self) -> type[WebSocketsSansIOProtocol]:
        """uvicorn's WebSocket protocol (websockets' sans-I/O), with a budget for control
        frames and the same bounded close and write deadline as HTTP connections."""
        guard = self

        class GuardedWebSocket(WebSocketsSansIOProtocol):
            control_tokens = float(CONTROL_BURST)
            control_at = 0.0
            write_paused_at: float | None = None
            closing_since: float | None = None

            def _control(self) -> bool:
                """One ping or pong from the client: within its budget, or the connection
                is dropped (no close handshake: its answers may never be read)."""
                now = time.monotonic()
                refill = (now - self.control_at) * CONTROL_RATE
                tokens = min(float(CONTROL_BURST), self.control_tokens + refill)
                self.control_at = now
                if tokens >= 1.0:
                    self.control_tokens = tokens - 1.0
                    return True
                self.control_tokens = tokens
                if not self.transport.is_closing():
                    guard.refused["ws_control_frames"] += 1
                    self.transport.abort()
                return False

            def handle_ping(self) -> None:
                if self._control():
                    super().handle_ping()

            def handle_pong(self, event: Any) -> None:
                if self._control():
                    super().handle_pong(event)

            def pause_writing(self) -> None:
                self.write_paused_at = time.monotonic()
                super().pause_writing()

            def resume_writing(self) -> None:
                self.write_paused_at = None
                super().resume_writing()

            def overdue(self, now: float) -> None:
                # The app closes a socket that stops reading (1013) sooner; this is for one
                # that keeps its buffer full another way, or whose close cannot flush.
                guard.unread(self, now)

            def handle_connect(self, event: Any) -> None:
                super().handle_connect(event)
                if getattr(self, "scope", None) is None:
                    return  # refused by websockets (a bad handshake): no app, no scope
                # The app may write frames built once for many sockets (servicekit.frames).
                extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
                extensions[EXTENSION] = self

            async def send(self, message: Any) -> None:
                await super().send(message)
                if message["type"] == "websocket.accept" and self.handshake_complete:
                    # The handshake is over, and the app read what it needed of it: the
                    # scope's copy of its headers was 1.6 KB of every idle socket
                    # (tracemalloc, 2,000 sockets). (Dropping uvicorn's request and
                    # response too saved 2 KB more, but made the hot channel's p99 4x
                    # worse, for a reason not found: left alone.)
                    self.scope["headers"] = []

            def can_write_frames(self) -> bool:
                return (
                    self.handshake_complete
                    and not self.close_sent
                    and self.writable.is_set()
                    and self.conn.state is State.OPEN
                    and not self.conn.extensions
                    and not self.transport.is_closing()
                )

            def write_frames(self, data: bytes) -> None:
                self.transport.write(data)

        return GuardedWebSocket

    async def sweep(self, state: ServerState, interval: float = 1.0) -> None:
        """Close connections past their deadlines, once every ``interval`` seconds."""
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            connections: Iterable[Any] = list(state.connections)
            for protocol in connections:
                overdue = getattr(protocol, "overdue", None)
                if overdue is not None:
                    overdue(now)
