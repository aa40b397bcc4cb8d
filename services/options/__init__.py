"""Settings that carry their own flag, environment variable, parser and help.

A settings dataclass is the one source of every default: a field declared with
:func:`setting` becomes a command-line flag and an environment variable, and
``--help`` shows its default and its variable. :func:`add_flags` builds the
flags, :func:`build` reads flags, then the environment, then the default, once,
at the entry point. Nested settings dataclasses (a node's ``log``) contribute
their own flags.
"""

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_KEY = "option"


class ConfigError(Exception):
    """A flag or environment variable has a value we cannot use."""


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str | None
    """None: environment only (secrets never go on a command line, where ``ps`` shows them)."""
    env: str | None
    help: str
    parse: Callable[[str], Any]
    shown: str | None
    """How the default reads in --help, when its repr would mislead (or is secret)."""


def setting(
    default: Any,
    *,
    flag: str | None,
    env: str | None,
    help: str,
    parse: Callable[[str], Any] = str,
    shown: str | None = None,
    secret: bool = False,
) -> Any:
    """A dataclass field that is also a flag and an environment variable. A ``secret`` is
    read from the environment only and left out of the settings' repr (and so of logs)."""
    if secret and flag is not None:
        raise TypeError("a secret setting has no flag")
    if flag is None and env is None:
        raise TypeError("a setting needs a flag or an environment variable")
    meta = {_KEY: Option(flag, env, help, parse, shown)}
    if isinstance(default, list | dict | set):
        raise TypeError("settings must be immutable: use a tuple")
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def nested(cls: type[T]) -> Any:
    """A field holding another settings dataclass, whose own flags join the parent's."""
    return dataclasses.field(default_factory=cls, metadata={_KEY: cls})


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def _shown(field: dataclasses.Field[Any], option: Option) -> str:
    default = field.default
    if option.shown is not None:
        shown = option.shown
    elif isinstance(default, tuple):
        shown = ",".join(map(str, default))
    elif default is None:
        shown = "unset"
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    else:
        shown = str(default)
    return shown


def _describe(field: dataclasses.Field[Any], option: Option) -> str:
    where = f"env {option.env}; " if option.env and option.flag else ""
    return f"{option.help} ({where}default: {_shown(field, option)})".replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One flag per :func:`setting` of ``cls`` (and of its nested settings)."""
    for field, option in _fields(cls):
        if isinstance(option, type):
            add_flags(parser, option, f"{prefix}{field.name}.")
            continue
        if option.flag is None:
            line = f"{option.env}: {_describe(field, option).replace('%%', '%')}"
            parser.epilog = (
                f"{parser.epilog}\n  {line}" if parser.epilog else (f"environment only:\n  {line}")
            )
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
            continue
        kwargs: dict[str, Any] = {"dest": prefix + field.name, "default": None}
        if field.type in (bool, "bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = option.env or field.name.upper()
        parser.add_argument(option.flag, help=_describe(field, option), **kwargs)


def build(cls: type[T], args: argparse.Namespace, env: Mapping[str, str], **fixed: Any) -> T:
    """The settings from flags, then environment variables, then defaults; ``fixed`` values
    (computed by the caller) win over all three."""
    return _build(cls, vars(args), env, "", fixed)


def _build(cls: type[T], given: dict[str, Any], env: Mapping[str, str], prefix: str,
           fixed: dict[str, Any]) -> T:  # fmt: skip
    values: dict[str, Any] = {}
    for field, option in _fields(cls):
        if field.name in fixed:
            values[field.name] = fixed[field.name]
        elif isinstance(option, type):
            values[field.name] = _build(option, given, env, f"{prefix}{field.name}.", {})
        else:
            value = _read(field, option, given.get(prefix + field.name), env)
            if value is not dataclasses.MISSING:
                values[field.name] = value
    for name, value in fixed.items():
        values.setdefault(name, value)
    return cls(**values)


def _read(field: dataclasses.Field[Any], option: Option, flag_value: Any,
          env: Mapping[str, str]) -> Any:  # fmt: skip
    if flag_value is not None:
        if isinstance(flag_value, bool):
            return flag_value
        return parse_as(option.parse, flag_value, option.flag or field.name)
    raw = env.get(option.env) if option.env else None
    if raw is None or raw == "":
        return dataclasses.MISSING
    if field.type in (bool, "bool") and option.parse is str:
        return parse_as(boolean, raw, option.env or field.name)
    return parse_as(option.parse, raw, option.env or field.name)


def parse_as(parse: Callable[[str], T], raw: str, name: str) -> T:
    try:
        return parse(raw)
    except ValueError as exc:
        shown = raw if len(raw) <= 80 else raw[:77] + "..."
        raise ConfigError(f"{name}={shown!r}: {exc}") from exc


def defaults(cls: type) -> dict[str, Any]:
    """Every flag's default, by environment variable (for docs and the chart's checks)."""
    out: dict[str, Any] = {}
    for field, option in _fields(cls):
        if isinstance(option, type):
            out.update(defaults(option))
        elif option.env:
            out[option.env] = field.default
    return out


def env_names(cls: type) -> set[str]:
    return set(defaults(cls))


# Parsers shared by the settings of every service.


def boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum}")
        return value

    return parse


def positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be >= 0")
    return value


port = int_at_least(0, 65535)
positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def markdown_rows(cls: type, scope: str = "") -> list[str]:
    """``| flag | env | default | what |`` rows for the README, from the settings themselves."""
    rows = []
    for field, option in _fields(cls):
        if isinstance(option, type):
            rows += markdown_rows(option, scope)
            continue
        env = f"`{option.env}`" if option.env else ""
        flag = f"`{option.flag}`{scope}" if option.flag else "(environment only)"
        rows.append(f"| {flag} | {env} | {_shown(field, option)} | {option.help} |")
    return rows


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}  # fmt: skip


def byte_size(raw: str) -> int:
    """``10GiB``, ``500MB``, ``4096``: a non-negative number of bytes."""
    text = raw.strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :]
    if unit not in _UNITS or not number:
        raise ValueError("must be a size such as 4096, 500MB or 10GiB")
    value = int(float(number) * _UNITS[unit])
    if value < 0:
        raise ValueError("must be >= 0")
    return value
