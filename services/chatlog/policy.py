"""The grants bucket: a JetStream KV beside the log (never in it: a replay must not
resurrect a revoked grant, and a revocation must be final at once).

Keys are ``<user, base64url>.<channel>``; values are opaque here (the auth package owns
their shape). Nodes watch the bucket (an ordered consumer: every change reaches every
node in order, within milliseconds); the archiver reads single keys.
"""

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from chatlog.connection import boundary
from chatlog.errors import LogError
from chatlog.log import ChatLog
from chatlog.names import POLICY_BUCKET, is_channel

log = logging.getLogger("chatlog.policy")

OnChange = Callable[[str, str, bytes | None], None]
"""(user, channel, value or None when deleted)."""


def grant_key(user: str, channel: str) -> str:
    encoded = base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")
    return f"{encoded}.{channel}"


def parse_key(key: str) -> tuple[str, str] | None:
    encoded, _, channel = key.partition(".")
    if not is_channel(channel):
        return None
    try:
        user = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, channel


async def _bucket(chatlog: ChatLog) -> KeyValue:
    return await chatlog._connection().js.key_value(POLICY_BUCKET)


async def put_grant(chatlog: ChatLog, user: str, channel: str, value: bytes) -> None:
    async with boundary("put grant", chatlog._conn):
        await (await _bucket(chatlog)).put(grant_key(user, channel), value)


async def delete_grant(chatlog: ChatLog, user: str, channel: str) -> None:
    async with boundary("delete grant", chatlog._conn):
        await (await _bucket(chatlog)).delete(grant_key(user, channel))


async def get_grant(chatlog: ChatLog, user: str, channel: str) -> bytes | None:
    async with boundary("get grant", chatlog._conn):
        try:
            entry = await (await _bucket(chatlog)).get(grant_key(user, channel))
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value or None


async def watch_grants(chatlog: ChatLog, on_change: OnChange, loaded: Callable[[], None]) -> None:
    """Apply every grant and every later change, for ever; ``loaded`` once the bucket's
    content has been applied. Re-watches (from the current content) after the connection
    was replaced or the watch broke: a change missed meanwhile is in that content."""
    missing_said = False
    while True:
        conn = chatlog._conn
        if conn is None:  # the follower connects the log handle; we only use it
            await asyncio.sleep(0.1)
            continue
        try:
            async with boundary("watch grants", conn):
                try:
                    bucket = await _bucket(chatlog)
                except nats.js.errors.BucketNotFoundError:
                    # Created by ensure-stream; until an admin runs it (a log made before
                    # grants existed) there are none: fewer permissions, never more.
                    if not missing_said:
                        log.warning("no bucket %s: no grants until it exists", POLICY_BUCKET)
                        missing_said = True
                    loaded()
                    await asyncio.sleep(5.0)
                    continue
                watcher = await bucket.watchall()
                try:
                    await _follow(chatlog, conn, watcher, on_change, loaded)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
        except (LogError, nats.errors.Error) as exc:
            log.warning("grants watch broke (%s); watching again", exc)
        await asyncio.sleep(1.0)


async def _follow(
    chatlog: ChatLog,
    conn: object,
    watcher: KeyValue.KeyWatcher,
    on_change: OnChange,
    loaded: Callable[[], None],
) -> None:
    while chatlog._conn is conn:
        try:
            entry = await watcher.updates(timeout=2.0)  # type: ignore[no-untyped-call]
        except nats.errors.TimeoutError:
            continue
        if entry is None:
            loaded()
            continue
        parsed = parse_key(entry.key)
        if parsed is None:
            log.warning("grants bucket: key %r is not <user>.<channel>; ignored", entry.key)
            continue
        deleted = entry.operation in ("DEL", "PURGE") or not entry.value
        on_change(*parsed, None if deleted else entry.value)
