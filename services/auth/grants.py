"""Grants: per user and channel, read and send, kept beside the log in a KV bucket and
watched by every node. One dict lookup per check, whatever the number of grants."""

import msgspec

from auth.identity import Identity


class Grant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    read: bool = False
    send: bool = False


class Grants:
    """The grants table a node keeps in step with the bucket."""

    def __init__(self) -> None:
        self._by_user: dict[str, dict[str, Grant]] = {}
        self.count = 0

    def set(self, user: str, channel: str, grant: Grant | None) -> None:
        channels = self._by_user.setdefault(user, {})
        had = channels.pop(channel, None) is not None
        if grant is not None and (grant.read or grant.send):
            channels[channel] = grant
            self.count += 0 if had else 1
        else:
            self.count -= 1 if had else 0
        if not channels:
            del self._by_user[user]

    def get(self, user: str, channel: str) -> Grant | None:
        channels = self._by_user.get(user)
        return None if channels is None else channels.get(channel)

    def of_user(self, user: str) -> dict[str, Grant]:
        return dict(self._by_user.get(user, {}))


class Access:
    """The one place that decides: token claims (patterns, admin), then grants."""

    def __init__(self, grants: Grants) -> None:
        self.grants = grants

    def may_read(self, who: Identity, channel: str) -> bool:
        if who.admin or who.read.match(channel):
            return True
        grant = self.grants.get(who.user, channel) if who.user is not None else None
        return grant is not None and grant.read

    def may_send(self, who: Identity, channel: str) -> bool:
        if who.admin or who.send.match(channel):
            return True
        grant = self.grants.get(who.user, channel) if who.user is not None else None
        return grant is not None and grant.send
