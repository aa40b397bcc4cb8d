"""Response shapes both services serve, so a page reads the same from a node or the archiver."""

import msgspec

PAGE_DEFAULT = 100
PAGE_MAX = 1000
"""Records per page: ``limit`` defaults to PAGE_DEFAULT and may be at most PAGE_MAX."""
CHANNELS_MAX = 1000
"""Channels per ``/channels`` page (``?after=<last name>&limit=N`` for the next)."""
PRESENCE_MAX = 1000
"""Members per ``/presence`` page (and per WebSocket ``presence`` snapshot)."""
SEQ_MAX = 2**63 - 1
"""The largest seq a query may name (JetStream's sequences are unsigned 64-bit; it
refuses larger ones as malformed)."""


class MessagesPage(msgspec.Struct, frozen=True):
    channel: str
    epoch: str
    last_seq: int
    messages: list[msgspec.Raw]
    """Stored records, already encoded once; spliced in without re-encoding."""


class ChannelInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    channel: str
    count: int
    last_seq: int
    online: int | None = None
    """Users in the channel now (chat nodes only: the archiver knows the log, not who is
    connected)."""


class Problem(msgspec.Struct, frozen=True):
    """Every error answer: a stable code for programs, a sentence for people."""

    error: str
    detail: str
