"""Run an ASGI app on uvicorn (uvloop, httptools) with a graceful SIGTERM.

On the first SIGTERM or SIGINT we run ``before_exit`` (the chat node closes its
WebSockets with 1001 and reports not ready) and only then let uvicorn stop; a
second signal stops at once. Uvicorn alone would close WebSockets with 1012.
"""

import asyncio
import signal
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from litestar import Litestar

from servicekit.connections import Guard
from servicekit.workers import Worker


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        before_exit: Callable[[], Awaitable[None]] | None,
        grace: float,
        guard: Guard,
    ) -> None:
        super().__init__(config)
        self._guard = guard
        self._before_exit = before_exit
        self._grace = grace
        self._draining: asyncio.Task[None] | None = None
        self.worker = False
        """One of ``--workers``: SIGINT comes to it through the supervisor, as SIGTERM."""
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        sweep = asyncio.create_task(self._guard.sweep(self.server_state))
        try:
            await super().serve(sockets)  # type: ignore[arg-type]
        finally:
            sweep.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT and self.worker:
            # A terminal's Ctrl-C reaches every process of the group; the supervisor
            # sends its workers SIGTERM for it. Taken twice, it would skip the drain.
            return
        if self._before_exit is None or self._loop is None or self._draining is not None:
            super().handle_exit(sig, frame)
            return
        # We are in a signal handler: hand the drain over to the event loop.
        self._loop.call_soon_threadsafe(self._start_drain, sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        assert self._before_exit is not None
        try:
            await asyncio.wait_for(self._before_exit(), self._grace)
        except Exception:
            pass
        finally:
            super().handle_exit(sig, frame)


def run(
    app: Litestar,
    host: str,
    port: int,
    guard: Guard,
    *,
    grace: float = 10.0,
    before_exit: Callable[[], Awaitable[None]] | None = None,
    worker: Worker | None = None,
) -> None:
    """``worker``: one of ``--workers`` (servicekit.workers): it shares the port with the
    others (SO_REUSEPORT) and also listens on its own Unix socket."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=guard.protocol(),  # uvicorn's httptools protocol with our connection limits
        ws=guard.websocket_protocol(),  # websockets' sans-I/O protocol, with our limits
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(grace) + 1,
        ws_max_size=1 << 20,
        # permessage-deflate keeps a zlib compressor and decompressor per socket: about
        # 45 KB of 64 KB per idle connection (tracemalloc), and CPU on every frame of a
        # fan-out. Chat frames are small; we send them uncompressed, and so a message's
        # frame is the same bytes for every socket (servicekit.frames).
        ws_per_message_deflate=False,
    )
    server = _Server(config, before_exit, grace, guard)
    server.worker = worker is not None
    server.run(sockets=worker.listeners(host, port) if worker is not None else None)
