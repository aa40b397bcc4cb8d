"""Flags and environment variables, read once, turned into frozen settings.

Every flag has an environment variable (the Helm chart sets those); a flag
given on the command line wins over the variable, which wins over the default.
"""

import argparse
import os
import socket
from collections.abc import Callable, Mapping
from typing import TypeVar

from archiver.settings import ArchiverSettings
from chat.settings import NodeSettings
from chatlog import StreamSpec

T = TypeVar("T")

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class ConfigError(Exception):
    """A flag or environment variable has a value we cannot use."""


def _env(env: Mapping[str, str], name: str, default: T, cast: Callable[[str], T]) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from exc


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return cast


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535")
    return value


def _keep(raw: str) -> int | None:
    value = int(raw)
    if value == 0:
        return None
    if value < 100:
        raise ValueError("must be 0 (hold everything) or >= 100 (a join shows the last 100)")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def add_service_flags(parser: argparse.ArgumentParser, env: Mapping[str, str], port: int) -> None:
    """Flags shared by ``node`` and ``archiver``, defaulting to their environment variables."""
    parser.add_argument("--host", default=env.get("HOST") or "127.0.0.1", help="env HOST")
    parser.add_argument(
        "--port", type=_port, default=_env(env, "PORT", port, _port), help="env PORT"
    )
    add_stream_flags(parser, env)
    parser.add_argument("--log-level", default=env.get("LOG_LEVEL") or "INFO", help="env LOG_LEVEL")


def add_stream_flags(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Where NATS is, and the stream to create if it does not exist."""
    parser.add_argument(
        "--nats-url",
        default=env.get("NATS_URL") or DEFAULT_NATS_URL,
        help="NATS server URL, or a comma-separated list of them (env NATS_URL)",
    )
    parser.add_argument(
        "--stream-replicas",
        type=_positive_int,
        default=_env(env, "STREAM_REPLICAS", 1, _positive_int),
        help="replicas of the CHAT stream if this service creates it (env STREAM_REPLICAS)",
    )
    parser.add_argument(
        "--max-text",
        type=_positive_int,
        default=_env(env, "MAX_TEXT_BYTES", 8192, _positive_int),
        help="largest text in bytes, if this service creates the stream (env MAX_TEXT_BYTES)",
    )
    parser.add_argument(
        "--duplicate-window",
        type=_positive_float,
        default=_env(env, "DUPLICATE_WINDOW", 120.0, _positive_float),
        help="seconds in which a repeated message id is a duplicate (env DUPLICATE_WINDOW)",
    )


def nats_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    if not urls:
        raise ConfigError("NATS_URL is empty")
    for url in urls:
        if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ConfigError(f"NATS URL {url!r} must start with nats://")
    return urls


def stream_spec(args: argparse.Namespace) -> StreamSpec:
    return StreamSpec(
        replicas=args.stream_replicas,
        duplicate_window=args.duplicate_window,
        max_text=args.max_text,
    )


def node_settings(args: argparse.Namespace) -> NodeSettings:
    return NodeSettings(
        node_id=args.node_id or f"{socket.gethostname()}:{args.port}",
        host=args.host,
        port=args.port,
        nats_urls=nats_urls(args.nats_url),
        stream=stream_spec(args),
        grace=args.grace,
        ws_queue=args.ws_queue,
        keep_per_channel=args.keep_per_channel,
        snapshot_every=args.snapshot_every,
    )


def archiver_settings(args: argparse.Namespace) -> ArchiverSettings:
    return ArchiverSettings(
        host=args.host,
        port=args.port,
        nats_urls=nats_urls(args.nats_url),
        stream=stream_spec(args),
    )


def add_node_flags(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    add_service_flags(parser, env, 8001)
    parser.add_argument("--node-id", default=env.get("NODE_ID") or "", help="env NODE_ID")
    parser.add_argument(
        "--grace",
        type=_positive_float,
        default=_env(env, "GRACE_SECONDS", 10.0, _positive_float),
        help="seconds SIGTERM waits for WebSockets to close (env GRACE_SECONDS)",
    )
    parser.add_argument(
        "--keep-per-channel",
        type=_keep,
        default=_env(env, "KEEP_PER_CHANNEL", None, _keep),
        help="hold only the newest N (>= 100) records per channel in memory; older pages "
        "are read from the log (env KEEP_PER_CHANNEL; default: hold everything)",
    )
    parser.add_argument(
        "--snapshot-every",
        type=_non_negative_int,
        default=_env(env, "SNAPSHOT_EVERY", 100_000, _non_negative_int),
        help="save a replica snapshot each time the log grows by N messages, so new nodes "
        "replay only the tail; 0 never saves (env SNAPSHOT_EVERY)",
    )
    parser.add_argument(
        "--ws-queue",
        type=_positive_int,
        default=_env(env, "WS_QUEUE", 1024, _positive_int),
        help="frames a WebSocket may have waiting before it is closed with 1013 (env WS_QUEUE)",
    )


def environ() -> Mapping[str, str]:
    return os.environ
