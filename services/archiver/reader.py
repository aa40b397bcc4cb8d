"""Reads pages of a channel straight from the stream, applying the replicas' payload rule."""

import asyncio
import logging
from collections.abc import AsyncIterator

from archiver.settings import ArchiverSettings
from chatlog import ChatLog, LogError, LogUnavailable

log = logging.getLogger("archiver")


class Reader:
    def __init__(self, settings: ArchiverSettings) -> None:
        self._settings = settings
        self.chatlog: ChatLog | None = None
        self.ready = False

    async def run(self) -> None:
        """Connect (retrying until NATS answers) and ensure the stream; the owner cancels us."""
        backoff = 0.1
        while self.chatlog is None:
            try:
                self.chatlog = await ChatLog.connect(
                    list(self._settings.nats_urls),
                    name="archiver",
                    spec=self._settings.stream,
                    timeout=self._settings.timeout,
                )
            except LogUnavailable as exc:
                log.warning("%s; retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        while not self.ready:
            try:
                await self.chatlog.ensure_stream()
                self.ready = True
                log.info("archiver ready")
            except LogError as exc:
                # Not only "unavailable": a fresh cluster answers "no suitable peers for
                # placement" until its servers have met, and a conflicting stream needs an
                # operator. Either way: stay not ready, say why, try again.
                log.warning("cannot ensure the stream: %s; retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def log(self) -> ChatLog:
        if self.chatlog is None or not self.ready:
            raise LogUnavailable("not connected to the log yet")
        return self.chatlog

    async def page(
        self, channel: str, after: int, limit: int, max_text: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        """Up to ``limit`` records with seq > after, and the seq to continue after."""
        return await self.log().read_records(channel, after, limit, max_text)

    async def export(self, channel: str, max_text: int, up_to: int) -> AsyncIterator[bytes]:
        """Every record of the channel up to seq ``up_to``, one JSON line each, a page at a
        time: memory stays constant however long the channel is."""
        cursor = 0
        while cursor < up_to:
            records, next_cursor = await self.page(
                channel, cursor, self._settings.export_page, max_text
            )
            for seq, record in records:
                if seq > up_to:
                    return
                yield record + b"\n"
            if next_cursor == cursor:
                return
            cursor = next_cursor
