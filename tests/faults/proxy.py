"""A TCP proxy the test owns, to partition a nats-server without touching the network stack.

``cut()`` blackholes: bytes stop flowing both ways on every open connection and
new connections are accepted and held silently, as when packets are dropped.
``heal()`` drops the held connections (as stale ones die after a real partition)
and forwards new ones again. Everything listens on 127.0.0.1 and runs in one
background thread with its own event loop, stopped by ``close()``.
"""

import asyncio
import contextlib
import threading

from chat_cluster.processes import free_port


class Proxy:
    def __init__(self, target_port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._loop = loop
        self._cut = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self._cut:
                await reader.read()  # held silently until the client gives up or we heal
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            for w in (writer,):
                self._close(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()  # a partition: nothing flows until heal()
                writer.write(data)
                await writer.drain()
        finally:
            self._close(writer)

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        with contextlib.suppress(Exception):
            writer.close()

    def cut(self) -> None:
        self._cut = True
        self._flowing.clear()

    def heal(self) -> None:
        for writer in list(self._writers):
            self._close(writer)
        self._cut = False
        self._flowing.set()

    async def stop(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()


class Proxies:
    """A set of proxies on one background event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.all: list[Proxy] = []

    def add(self, target_port: int) -> Proxy:
        proxy = Proxy(target_port, self._loop)
        asyncio.run_coroutine_threadsafe(proxy.start(), self._loop).result(10)
        self.all.append(proxy)
        return proxy

    def cut(self, proxies: list[Proxy]) -> None:
        for proxy in proxies:
            self._loop.call_soon_threadsafe(proxy.cut)

    def heal(self, proxies: list[Proxy]) -> None:
        for proxy in proxies:
            self._loop.call_soon_threadsafe(proxy.heal)

    def close(self) -> None:
        for proxy in self.all:
            asyncio.run_coroutine_threadsafe(proxy.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
