"""Who a request or socket is, and what it may do per channel.

A token's claims (``docs/security.md``)::

    {"sub": "ada", "name": "Ada L.", "exp": ..., "chat": {"read": ["room-*"],
     "send": ["room-1"], "admin": false}}

``read`` and ``send`` are channel patterns (``*`` matches any run of characters);
grants kept beside the log (:mod:`auth.grants`) add exact channels per user.
"""

import functools
import re
import unicodedata
from collections.abc import Iterable
from typing import Annotated

import msgspec

from chatlog.records import ANONYMOUS as ANONYMOUS_USER
from chatlog.records import RAW_USER

UserName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Pattern = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_*-]+\Z")]


class ChatClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    read: tuple[Pattern, ...] = ()
    send: tuple[Pattern, ...] = ()
    admin: bool = False


class Claims(msgspec.Struct, frozen=True):
    """The claims we read; others (iss, aud, jti...) are checked by PyJWT or ignored."""

    sub: UserName
    exp: float
    name: UserName | None = None
    chat: ChatClaims = ChatClaims()


@functools.lru_cache(maxsize=4096)
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    parts = ("[A-Za-z0-9_-]*".join(map(re.escape, p.split("*"))) for p in patterns)
    return re.compile("|".join(f"(?:{part})" for part in parts))


class Patterns:
    """Channel patterns compiled once into one regular expression."""

    __slots__ = ("_re", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._re = _matcher(self.patterns)

    def match(self, channel: str) -> bool:
        return self._re is not None and self._re.fullmatch(channel) is not None


class Identity:
    """A verified token's holder. ``user`` None: anonymous mode (``--no-auth``), where the
    client names itself and may do everything, as before tokens existed."""

    __slots__ = ("admin", "expires", "name", "read", "send", "token", "user")

    def __init__(
        self,
        user: str | None,
        name: str | None = None,
        read: Patterns | None = None,
        send: Patterns | None = None,
        admin: bool = False,
        expires: float | None = None,
    ) -> None:
        self.user = user
        self.name = name
        self.read = read or Patterns(())
        self.send = send or Patterns(())
        self.admin = admin
        self.expires = expires
        self.token: str | None = None
        """The token this identity was verified from (verified again when keys change);
        sockets with the same token share one Identity, and so one copy of it."""

    @classmethod
    def of(cls, claims: Claims) -> "Identity":
        """Raises ValueError for names that would mislead readers of the history."""
        for what, value in (("sub", claims.sub), ("name", claims.name)):
            if value is not None and any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
                raise ValueError(f"{what} holds control or formatting characters")
        if claims.sub in RESERVED:
            raise ValueError(f"sub {claims.sub!r} is reserved (it names raw or anonymous sends)")
        return cls(
            claims.sub,
            claims.name,
            Patterns(claims.chat.read),
            Patterns(claims.chat.send),
            claims.chat.admin,
            claims.exp,
        )

    @property
    def anonymous(self) -> bool:
        return self.user is None


ANONYMOUS = Identity(None, admin=True)
"""Everyone, in ``--no-auth`` mode."""

RESERVED = frozenset({RAW_USER, ANONYMOUS_USER})
"""Users the log itself names (chatlog.records): no token may be one of them."""
