"""Every JSON shape a chat node reads or writes, REST and WebSocket. Built once, reused."""

from typing import Annotated

import msgspec

from auth import Grant
from chatlog.names import DEFAULT_CHANNEL
from chatlog.records import MessageId, Text, Timestamp, UserName
from servicekit.frames import text_frame


class SendRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /messages``. ``user`` will come from a signed token once auth exists."""

    text: Text
    channel: str = DEFAULT_CHANNEL
    id: MessageId | None = None
    user: UserName | None = None
    sent_at: Timestamp | None = None


class SendResult(msgspec.Struct, frozen=True):
    seq: int
    id: str
    duplicate: bool


class Progress(msgspec.Struct, frozen=True):
    status: str
    node_id: str
    applied: int
    target: int
    epoch: str | None
    connected: bool
    skipped: int
    resets: int
    snapshot_seq: int
    entries: int
    """Entries applied this epoch (records and skipped ones): the digest's count."""
    digest: str
    """The log's digest at ``applied`` as this replica computed it (chat-cluster verify)."""
    append_only: bool
    log_full: bool
    log_stalled: bool
    """The log has answered none of the last sends although NATS is connected."""
    log_usage: float
    """Bytes stored / the log's byte limit (0 without a limit)."""
    lag: int
    """Messages in the log not yet applied here (as of the last look, once a second)."""


# WebSocket, client to node: a tagged union on "op".
class Join(msgspec.Struct, frozen=True, tag="join", tag_field="op", forbid_unknown_fields=True):
    channel: str
    after: int | None = None
    presence: bool = False
    """Also send a ``presence`` snapshot after ``joined``, then ``presence_join`` and
    ``presence_leave`` frames while joined."""


class Leave(msgspec.Struct, frozen=True, tag="leave", tag_field="op", forbid_unknown_fields=True):
    channel: str


class Send(msgspec.Struct, frozen=True, tag="send", tag_field="op", forbid_unknown_fields=True):
    channel: str
    text: Text
    id: MessageId | None = None
    user: UserName | None = None
    sent_at: Timestamp | None = None


class Auth(msgspec.Struct, frozen=True, tag="auth", tag_field="op", forbid_unknown_fields=True):
    """The first frame of a socket whose handshake carried no token."""

    token: str


class Refresh(
    msgspec.Struct, frozen=True, tag="refresh", tag_field="op", forbid_unknown_fields=True
):
    """A new token for the same user, before the current one expires."""

    token: str


class PresenceQuery(
    msgspec.Struct, frozen=True, tag="presence", tag_field="op", forbid_unknown_fields=True
):
    """Who is in ``channel`` now (the channel need not be joined; it must be readable)."""

    channel: str
    after: Annotated[str, msgspec.Meta(max_length=64)] = ""
    """Members listed after this user name (the next page of a channel with many)."""


ClientFrame = Join | Leave | Send | Auth | Refresh | PresenceQuery
OPS = "join, leave, send, auth, refresh, presence"


# WebSocket, node to client. Messages are the stored record JSON with "op" spliced in.
class Joined(msgspec.Struct, frozen=True, tag="joined", tag_field="op"):
    channel: str
    epoch: str
    last_seq: int


class Left(msgspec.Struct, frozen=True, tag="left", tag_field="op", omit_defaults=True):
    channel: str
    reason: str | None = None
    """Set when the node left for the client: ``forbidden`` (read access was revoked)."""


class Authed(msgspec.Struct, frozen=True, tag="authed", tag_field="op", omit_defaults=True):
    """The token was accepted (after ``auth`` or ``refresh``)."""

    user: str
    expires_at: int | None = None
    name: str | None = None


class TokenExpiring(msgspec.Struct, frozen=True, tag="token_expiring", tag_field="op"):
    """Send ``refresh`` with a new token within ``expires_in`` seconds, or the socket is
    closed with 4002."""

    expires_in: float


class Ack(msgspec.Struct, frozen=True, tag="ack", tag_field="op"):
    id: str
    seq: int
    duplicate: bool


class ErrorFrame(msgspec.Struct, frozen=True, tag="error", tag_field="op"):
    code: str
    detail: str
    id: str | None = None


class Member(msgspec.Struct, frozen=True):
    user: str
    count: int
    """The user's sockets in the channel, on every node (tabs, devices)."""


class PresencePage(msgspec.Struct, frozen=True):
    """``GET /presence``: members in user order, ``limit`` of them after ``after``."""

    channel: str
    online: int
    """Users in the channel now (each once, whatever their number of sockets)."""
    members: list[Member]
    more: bool
    """More members after the last one listed: ask again with ``after``."""


class PresenceFrame(msgspec.Struct, frozen=True, tag="presence", tag_field="op"):
    """The WebSocket's ``presence`` snapshot (the same page as ``GET /presence``)."""

    channel: str
    online: int
    members: list[Member]
    more: bool


class PresenceJoin(msgspec.Struct, frozen=True, tag="presence_join", tag_field="op"):
    """Users who came into ``channel`` (their first socket, on any node) in the last
    tick. Apply as a set: a user already shown stays shown."""

    channel: str
    users: list[str]
    online: int


class PresenceLeave(msgspec.Struct, frozen=True, tag="presence_leave", tag_field="op"):
    """Users who left ``channel`` (their last socket closed or left, or their node
    stopped or went silent for PRESENCE_TTL) in the last tick."""

    channel: str
    users: list[str]
    online: int


class GrantView(msgspec.Struct, frozen=True):
    """``/admin/grants``: what a user may do on a channel beyond their token's claims."""

    user: str
    channel: str
    read: bool
    send: bool


frame_decoder = msgspec.json.Decoder(ClientFrame)
grant_decoder = msgspec.json.Decoder(Grant)
send_decoder = msgspec.json.Decoder(SendRequest)
encoder = msgspec.json.Encoder()


class Frame:
    """A frame for sockets, built once however many get it: its text (for the ASGI send)
    and its wire bytes (servicekit.frames), made on first use and then shared."""

    __slots__ = ("_wire", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = text_frame(self.text.encode())
        return self._wire


def message_frame(record_json: str) -> str:
    """A stored record becomes a ``{"op": "message", ...}`` frame without re-encoding."""
    return '{"op":"message",' + record_json[1:]


def encode_text(value: object) -> str:
    return encoder.encode(value).decode()
