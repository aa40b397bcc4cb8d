"""What a node sends a client over ``/ws``, as the client reads it, and the events a
:class:`chatclient.ChatClient` hands its user. Decoders are built once.

The client keeps its own copy of these shapes rather than importing the node's: it is
the contract as a client sees it (a node adding a field must not break it), and it
keeps the client free of the server's dependencies.
"""

import msgspec


class Message(msgspec.Struct, frozen=True, tag="message", tag_field="op", kw_only=True):
    seq: int
    channel: str
    id: str
    user: str
    text: str
    stored_at: str
    sent_at: str | None = None
    name: str | None = None


class Joined(msgspec.Struct, frozen=True, tag="joined", tag_field="op"):
    channel: str
    epoch: str
    last_seq: int


class Left(msgspec.Struct, frozen=True, tag="left", tag_field="op"):
    channel: str
    reason: str | None = None


class Authed(msgspec.Struct, frozen=True, tag="authed", tag_field="op"):
    user: str
    expires_at: int | None = None
    name: str | None = None


class TokenExpiring(msgspec.Struct, frozen=True, tag="token_expiring", tag_field="op"):
    expires_in: float


class Ack(msgspec.Struct, frozen=True, tag="ack", tag_field="op"):
    id: str
    seq: int
    duplicate: bool


class Error(msgspec.Struct, frozen=True, tag="error", tag_field="op"):
    code: str
    detail: str
    id: str | None = None


class Member(msgspec.Struct, frozen=True):
    user: str
    count: int
    """The user's sockets in the channel, on every node."""


class Presence(msgspec.Struct, frozen=True, tag="presence", tag_field="op"):
    """Who is in ``channel`` (a join with ``presence=True``, again after each reconnect):
    the first 1,000 members in user order; ``more`` when there are others."""

    channel: str
    online: int
    members: list[Member]
    more: bool


class PresenceJoin(msgspec.Struct, frozen=True, tag="presence_join", tag_field="op"):
    """Users who came into ``channel``; ``online`` is the count after them."""

    channel: str
    users: list[str]
    online: int


class PresenceLeave(msgspec.Struct, frozen=True, tag="presence_leave", tag_field="op"):
    """Users who left ``channel`` (their last socket, or their node went away)."""

    channel: str
    users: list[str]
    online: int


ServerFrame = (
    Message | Joined | Left | Authed | TokenExpiring | Ack | Error
    | Presence | PresenceJoin | PresenceLeave
)  # fmt: skip
decoder = msgspec.json.Decoder(ServerFrame)
encoder = msgspec.json.Encoder()


# Events, besides Message and Left, that the client hands its user.
class Connected(msgspec.Struct, frozen=True):
    node: str


class Disconnected(msgspec.Struct, frozen=True):
    node: str
    code: int | None
    """The WebSocket close code, None when the connection failed or broke."""
    reason: str
    retry_in: float
    """Seconds until the next attempt (on the next node of the list)."""


class EpochChanged(msgspec.Struct, frozen=True):
    """The log was replaced: the cursors of the old one mean nothing in it. The client has
    dropped them and joins every channel again (its last 100 messages follow)."""

    epoch: str


Event = (
    Message | Joined | Left | Error | Connected | Disconnected | EpochChanged
    | Presence | PresenceJoin | PresenceLeave
)  # fmt: skip
"""``Error``: a refusal that no send waits on (a join that was refused, a bad frame)."""
