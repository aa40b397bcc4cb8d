"""Stream and subject names: channel ``C`` is subject ``chat.C`` in stream ``CHAT``."""

import re

from chatlog.errors import InvalidInput

STREAM_NAME = "CHAT"
SUBJECT_PREFIX = "chat."
SUBJECTS = "chat.>"
DEFAULT_CHANNEL = "default-channel"

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


def subject_for(channel: str) -> str:
    return SUBJECT_PREFIX + check_channel(channel)


def channel_of(subject: str) -> str | None:
    """The channel a stored subject belongs to, or None if it names no valid channel."""
    if not subject.startswith(SUBJECT_PREFIX):
        return None
    name = subject[len(SUBJECT_PREFIX) :]
    return name if is_channel(name) else None
