"""A node's grants: kept in step with the bucket beside the log, and written to it by the
admin routes. A change reaches every node's watch within milliseconds; each node then
makes its own sockets leave what their users may no longer read."""

import logging

import msgspec

from auth import Grant, Grants
from chat.ws import Hub
from chatlog import ChatLog
from chatlog.policy import delete_grant, put_grant, watch_grants

log = logging.getLogger("chat.grants")

_decoder = msgspec.json.Decoder(Grant)
_encoder = msgspec.json.Encoder()


class Policy:
    def __init__(self, chatlog: ChatLog, grants: Grants, hub: Hub) -> None:
        self._chatlog = chatlog
        self.grants = grants
        self._hub = hub
        self.loaded = False
        """The bucket's content has been applied once (part of /readyz with auth on)."""
        self.changes = 0

    async def run(self) -> None:
        await watch_grants(self._chatlog, self._changed, self._loaded)

    def _loaded(self) -> None:
        if not self.loaded:
            log.info("grants loaded: %d", self.grants.count)
        self.loaded = True

    def _changed(self, user: str, channel: str, value: bytes | None) -> None:
        grant: Grant | None = None
        if value is not None:
            try:
                grant = _decoder.decode(value)
            except msgspec.DecodeError:
                log.warning("grant of %r on %s is not a grant; treated as none", user, channel)
        self.grants.set(user, channel, grant)
        self.changes += 1
        self._hub.recheck(user)

    async def put(self, user: str, channel: str, grant: Grant | None) -> None:
        """Write a grant (None: revoke). Every node, this one included, applies it from
        its watch: the bucket is the one truth."""
        if grant is None or not (grant.read or grant.send):
            await delete_grant(self._chatlog, user, channel)
        else:
            await put_grant(self._chatlog, user, channel, _encoder.encode(grant))
