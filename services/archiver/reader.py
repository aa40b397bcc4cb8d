"""The archiver's view of the log: startup (connect, check the stream) and exports."""

import logging
from collections.abc import AsyncIterator

from archiver.grants import FetchedGrants
from auth import Gate
from chatlog import ChatLog
from chatlog.retry import SERVICE, retry

log = logging.getLogger("archiver")


class Reader:
    def __init__(self, chatlog: ChatLog, export_page: int, gate: Gate) -> None:
        self.chatlog = chatlog
        self.gate = gate
        self.grants = FetchedGrants(chatlog, gate.grants, gate.settings.policy_cache)
        self._export_page = export_page
        self.ready = False
        """Connected once and the stream checked: the /readyz answer (with ``connected``)."""

    async def run(self) -> None:
        """Connect and check the stream, retrying until both work; the owner cancels us.

        Not only "unavailable" is retried: a fresh cluster answers "no suitable peers for
        placement" until its servers have met, and a conflicting stream needs an operator.
        Either way the archiver stays not ready and says why."""
        await retry(self.chatlog.connect, SERVICE, "connect to NATS")
        await retry(self.chatlog.check_stream, SERVICE, "check the stream")
        self.ready = True
        log.info("archiver ready")

    async def export(self, channel: str, max_text: int, up_to: int) -> AsyncIterator[bytes]:
        """Every record of the channel up to seq ``up_to``, one JSON line each, a page at a
        time: memory stays constant however long the channel is."""
        cursor = 0
        while cursor < up_to:
            records, next_cursor = await self.chatlog.read_records(
                channel, cursor, self._export_page, max_text
            )
            for seq, record in records:
                if seq > up_to:
                    return
                yield record + b"\n"
            if next_cursor == cursor:
                return
            cursor = next_cursor
