"""What an operator does to the log: create or check the stream (``ensure-stream``, ``up``),
and change grants (``grant``, ``revoke``)."""

import msgspec

from auth import Grant
from chatlog import ChatLog, LogInfo, LogSettings, StreamSpec
from chatlog.policy import delete_grant, get_grant, put_grant
from chatlog.retry import command, retry
from chatlog.roles import ADMIN


async def ensure_stream(
    settings: LogSettings, spec: StreamSpec, deadline: float, name: str
) -> LogInfo:
    """Create or check the stream, retrying while NATS or JetStream is not up yet (a fresh
    cluster elects its meta leader after all servers start, and answers "no suitable
    peers" until then). A conflicting stream fails at once (StreamConflict); any other
    log error is raised once ``deadline`` seconds have passed."""
    chatlog = ChatLog(settings, name, ADMIN)

    async def attempt() -> LogInfo:
        await chatlog.connect()
        return await chatlog.ensure_stream(spec)

    try:
        return await retry(attempt, command(deadline), "ensure the CHAT stream")
    finally:
        await chatlog.close()


async def change_grant(
    settings: LogSettings, user: str, channel: str, read: bool, send: bool, give: bool
) -> Grant:
    """Add (``give``) or take away read and/or send; returns what the user has now. Two
    admins changing the same user and channel at once: the last write wins."""
    chatlog = await ChatLog.open(settings, "chat-cluster grant", ADMIN)
    try:
        value = await get_grant(chatlog, user, channel)
        have = msgspec.json.decode(value, type=Grant) if value else Grant()
        if give:
            now = Grant(read=have.read or read, send=have.send or send)
        else:
            now = Grant(read=have.read and not read, send=have.send and not send)
        if now.read or now.send:
            await put_grant(chatlog, user, channel, msgspec.json.encode(now))
        else:
            await delete_grant(chatlog, user, channel)
        return now
    finally:
        await chatlog.close()
