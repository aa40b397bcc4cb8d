"""A Python client of a chat cluster: failover across nodes, resume without gap or
duplicate, idempotent sends, token refresh. See :mod:`chatclient.client`."""

from chatclient.client import AuthFailed, ChatClient, ClientClosed, Refused, SendFailed
from chatclient.frames import Ack, Connected, Disconnected, EpochChanged, Joined, Left, Message

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
    "Message",
    "Refused",
    "SendFailed",
]
