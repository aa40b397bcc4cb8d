"""Reads of a channel's history: from the replica, and from the log for what it dropped.

With ``--keep-per-channel`` a node holds only the newest records of each channel.
The log holds everything, and every replica encodes a record to the same bytes,
so a page that starts below what the node holds is read from the log up to the
first held seq and continues from memory: same API, same answers.
"""

from chat.follower import Follower
from chat.replica import Replica
from chatlog import LogError
from servicekit.errors import ServiceError, from_log_error


async def read(
    replica: Replica, follower: Follower, channel: str, after: int, limit: int
) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    dropped = replica.dropped_through(channel)
    if after < dropped:
        chatlog = follower.chatlog
        if chatlog is None:
            raise ServiceError(503, "log_unavailable", "not connected to NATS")
        try:
            records, _ = await chatlog.read_records(channel, after, limit, replica.max_text)
        except LogError as exc:
            raise from_log_error(exc) from exc
        out = [(seq, body.decode()) for seq, body in records if seq <= dropped]
        if len(out) == limit:
            return out
        after = dropped
    return out + replica.read(channel, after, limit - len(out))
