"""Reads of a channel's history: from the replica, and from the log for what it dropped.

With ``--keep-per-channel`` a node holds only the newest records of each channel.
The log holds everything, and every replica encodes a record to the same bytes,
so a page that starts below what the node holds is read from the log up to the
first held seq and continues from memory: same API, same answers.
"""

from chat.replica import Replica
from chatlog import ChatLog


async def read_before(
    replica: Replica, chatlog: ChatLog, channel: str, before: int, limit: int
) -> list[tuple[int, str]]:
    """Up to ``limit`` records of ``channel`` with seq < ``before``, ascending: the page
    before one a client has (scrolling back). What a bounded node no longer holds comes
    from the log."""
    held = replica.read_before(channel, before, limit)
    dropped = replica.dropped_through(channel)
    if len(held) == limit or dropped == 0:
        return held
    oldest = held[0][0] if held else min(before, dropped + 1)
    older = await chatlog.read_records_before(channel, oldest, limit - len(held), replica.max_text)
    return [(seq, body.decode()) for seq, body in older] + held


async def read(
    replica: Replica, chatlog: ChatLog, channel: str, after: int, limit: int
) -> list[tuple[int, str]]:
    """Up to ``limit`` records of ``channel`` after seq ``after``. Raises LogError when a
    page must come from the log and the log cannot answer."""
    out: list[tuple[int, str]] = []
    dropped = replica.dropped_through(channel)
    if after < dropped:
        records, _ = await chatlog.read_records(channel, after, limit, replica.max_text)
        out = [(seq, body.decode()) for seq, body in records if seq <= dropped]
        if len(out) == limit:
            return out
        after = dropped
    return out + replica.read(channel, after, limit - len(out))
