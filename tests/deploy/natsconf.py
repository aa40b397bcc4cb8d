"""Read a nats-server configuration the way nats-server reads it, for the parts the chart
uses: maps, arrays, quoted and bare strings, integers with size suffixes, booleans,
comments, ``include`` (relative to the including file) and ``$VARIABLE`` references,
which nats-server resolves from its environment and parses as a value in turn.

The real nats-server checks the syntax (``nats-server -t``); this is what lets the tests
look at what the rendered configuration means (who the users are, their permissions,
the routes once the environment is filled in)."""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_SIZES = {
    "": 1,
    "k": 1000,
    "kb": 1024,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1024**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
_NUMBER = re.compile(r"(-?\d+)([A-Za-z]*)")
_BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_ENDS_BARE = set(" \t\r\n,;]}#")


class ConfError(ValueError):
    pass


def load(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The configuration in ``path`` (with its includes), variables taken from ``env``."""
    return _Parser(path.read_text(), path.parent, env).document()


def loads(text: str, env: Mapping[str, str], base: Path = Path(".")) -> dict[str, Any]:
    return _Parser(text, base, env).document()


class _Parser:
    def __init__(self, text: str, base: Path, env: Mapping[str, str]) -> None:
        self.text = text
        self.pos = 0
        self.base = base
        self.env = env

    def document(self) -> dict[str, Any]:
        return self._entries(closing=None)

    # -- lexing helpers

    def _skip(self, newlines: bool = True) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#" or self.text.startswith("//", self.pos):
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _fail(self, what: str) -> ConfError:
        line = self.text.count("\n", 0, self.pos) + 1
        return ConfError(f"line {line}: {what}")

    # -- grammar

    def _entries(self, closing: str | None) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while True:
            self._skip()
            char = self._peek()
            if char in (",", ";"):
                self.pos += 1
                continue
            if char == "":
                if closing is not None:
                    raise self._fail(f"missing {closing!r}")
                return result
            if char == closing:
                self.pos += 1
                return result
            key = self._key()
            self._skip(newlines=False)
            if self._peek() in (":", "="):
                self.pos += 1
                self._skip(newlines=False)
            if key == "include":
                target = self._value()
                if not isinstance(target, str):
                    raise self._fail("include needs a file name")
                result.update(load(self.base / target, self.env))
                continue
            result[key] = self._value()

    def _key(self) -> str:
        char = self._peek()
        if char in "\"'":
            return self._quoted()
        match = re.compile(r"[A-Za-z0-9_$.\-]+").match(self.text, self.pos)
        if match is None:
            raise self._fail(f"expected a key, found {char!r}")
        self.pos = match.end()
        return match.group(0)

    def _value(self) -> Any:
        char = self._peek()
        if char == "{":
            self.pos += 1
            return self._entries(closing="}")
        if char == "[":
            self.pos += 1
            return self._array()
        if char in "\"'":
            return self._quoted()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _ENDS_BARE:
            self.pos += 1
        word = self.text[start : self.pos]
        if not word:
            raise self._fail(f"expected a value, found {char!r}")
        return self._bare(word)

    def _array(self) -> list[Any]:
        items: list[Any] = []
        while True:
            self._skip()
            char = self._peek()
            if char == ",":
                self.pos += 1
                continue
            if char == "]":
                self.pos += 1
                return items
            if char == "":
                raise self._fail("missing ']'")
            items.append(self._value())

    def _quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise self._fail("unterminated string")
            char = self.text[self.pos]
            self.pos += 1
            if char == quote:
                return "".join(out)
            if char == "\\" and quote == '"':
                escaped = self.text[self.pos]
                self.pos += 1
                out.append({"n": "\n", "t": "\t", "r": "\r"}.get(escaped, escaped))
            else:
                out.append(char)

    def _bare(self, word: str) -> Any:
        if word.startswith("$"):
            name = word[1:]
            if name not in self.env:
                raise self._fail(f"variable {name} is not set")
            # nats-server parses an environment variable's value as a config value.
            return _Parser(self.env[name], self.base, self.env)._value_alone()
        if word.lower() in _BOOLEANS:
            return _BOOLEANS[word.lower()]
        match = _NUMBER.fullmatch(word)
        if match and match.group(2).lower() in _SIZES:
            return int(match.group(1)) * _SIZES[match.group(2).lower()]
        return word

    def _value_alone(self) -> Any:
        self._skip()
        value = self._value()
        self._skip()
        if self.pos != len(self.text):
            raise self._fail(f"trailing text {self.text[self.pos :]!r}")
        return value
