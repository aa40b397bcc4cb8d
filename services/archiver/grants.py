"""The archiver's grants: read from the bucket per (user, channel) when a token's claims
do not settle a read, and kept for at most ``policy_cache`` seconds, so a revocation
reaches the archiver within that time (nodes watch the bucket instead)."""

import time

import msgspec

from auth import Grant, Grants
from chatlog import ChatLog
from chatlog.policy import get_grant

_decoder = msgspec.json.Decoder(Grant)
MAX_REMEMBERED = 10_000


class FetchedGrants:
    def __init__(self, chatlog: ChatLog, grants: Grants, max_age: float) -> None:
        self._chatlog = chatlog
        self._grants = grants
        self._max_age = max_age
        self._fetched: dict[tuple[str, str], float] = {}

    async def fetch(self, user: str, channel: str) -> None:
        key = (user, channel)
        now = time.monotonic()
        if now - self._fetched.get(key, -self._max_age) < self._max_age:
            return
        value = await get_grant(self._chatlog, user, channel)
        grant = None
        if value is not None:
            try:
                grant = _decoder.decode(value)
            except msgspec.DecodeError:
                grant = None
        self._grants.set(user, channel, grant)
        if len(self._fetched) >= MAX_REMEMBERED:
            self._fetched.clear()
        self._fetched[key] = now
