"""What an operator does to the log: create or check the stream (``ensure-stream``, ``up``)."""

from chatlog import ChatLog, LogInfo, LogSettings, StreamSpec
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
