"""A Python client of a chat cluster: failover across nodes, resume without gap or
duplicate, idempotent sends, token refresh, presence. See :mod:`chatclient.client`."""

from chatclient.client import AuthFailed, ChatClient, ClientClosed, Refused, SendFailed
from chatclient.frames import (
    Ack,
    Connected,
    Disconnected,
    EpochChanged,
    Joined,
    Left,
    Member,
    Message,
    Presence,
    PresenceJoin,
    PresenceLeave,
)

__all__ = [
    "Ack",
    "AuthFailed",
    "ChatClient",
    "ClientClosed",
    "Connected",
    "Disconnected",
    "EpochChanged",
    "Joined",
    "Left",
    "Member",
    "Message",
    "Presence",
    "PresenceJoin",
    "PresenceLeave",
    "Refused",
    "SendFailed",
]
