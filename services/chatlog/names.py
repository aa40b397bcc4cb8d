"""Stream and subject names: the log's layout, owned here and nowhere else.

Channel ``C`` lives on two subjects of the stream ``CHAT``:

- ``chat.C.node``: what chat nodes publish, the sender's identity stamped by the node.
  Only the ``node`` role may publish there.
- ``chat.C.raw``: what anyone with the ``publisher`` role sends with a plain
  ``nats pub chat.C ...`` (the seed's flow). The stream itself rewrites ``chat.C`` to
  ``chat.C.raw`` as it stores it (a subject transform), so whatever such a payload
  claims, its sender is the publisher role, never a user.

A channel's history is the filter ``chat.C.*``.
"""

import re

from chatlog.errors import InvalidInput

STREAM_NAME = "CHAT"
SUBJECT_PREFIX = "chat."
SUBJECTS = "chat.>"
NODE = "node"
RAW = "raw"
RAW_SOURCE = "chat.*"
"""What a publisher publishes on; stored as ``chat.<channel>.raw``."""
RAW_DEST = "chat.{{wildcard(1)}}.raw"
DEFAULT_CHANNEL = "default-channel"

SNAPSHOT_STREAM = "CHAT_SNAPSHOTS"
SNAPSHOT_SUBJECTS = "chatsnap.>"
SNAPSHOT_MANIFEST = "chatsnap.manifest"
SNAPSHOT_CHUNKS = "chatsnap.chunk"

_CHANNEL = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_channel(name: str) -> bool:
    return _CHANNEL.fullmatch(name) is not None


def check_channel(name: str) -> str:
    """Return ``name`` if it is a valid channel name, else raise InvalidInput."""
    if not is_channel(name):
        raise InvalidInput(
            "invalid_channel",
            f"channel {name[:80]!r} must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
        )
    return name


def node_subject(channel: str) -> str:
    """Where a chat node publishes a message of ``channel``."""
    return f"{SUBJECT_PREFIX}{check_channel(channel)}.{NODE}"


def raw_subject(channel: str) -> str:
    """Where a plain ``nats pub`` publishes (stored as ``chat.<channel>.raw``)."""
    return SUBJECT_PREFIX + check_channel(channel)


def channel_filter(channel: str) -> str:
    """Every stored message of ``channel``, whoever sent it."""
    return f"{SUBJECT_PREFIX}{check_channel(channel)}.*"


def channel_of(subject: str) -> tuple[str, str] | None:
    """``(channel, kind)`` of a stored subject (kind ``node`` or ``raw``), or None if the
    subject is not one a valid message can have."""
    if not subject.startswith(SUBJECT_PREFIX):
        return None
    name, _, kind = subject[len(SUBJECT_PREFIX) :].partition(".")
    if kind not in (NODE, RAW) or not is_channel(name):
        return None
    return name, kind


PRESENCE_SUBJECT = "chatpresence.v1"
"""Core NATS, never stored: nodes tell each other who is in which channel
(:mod:`chatlog.bus`). Not under ``chat.``: a publisher may publish on ``chat.*``, and
the stream stores ``chat.>``."""
PRESENCE_SUBJECTS = "chatpresence.>"

POLICY_BUCKET = "CHAT_POLICY"
"""Grants (who may read or send where), beside the log, not in it: a KV bucket."""
POLICY_STREAM = f"KV_{POLICY_BUCKET}"
POLICY_SUBJECTS = f"$KV.{POLICY_BUCKET}.>"
