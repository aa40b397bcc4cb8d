"""Response shapes both services serve, so a page reads the same from a node or the archiver."""

import msgspec


class MessagesPage(msgspec.Struct, frozen=True):
    channel: str
    epoch: str
    last_seq: int
    messages: list[msgspec.Raw]
    """Stored records, already encoded once; spliced in without re-encoding."""


class ChannelInfo(msgspec.Struct, frozen=True):
    channel: str
    count: int
    last_seq: int


class Problem(msgspec.Struct, frozen=True):
    """Every error answer: a stable code for programs, a sentence for people."""

    error: str
    detail: str
