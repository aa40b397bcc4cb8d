"""The archiver's REST routes. Errors reach clients through the one set of handlers."""

from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from archiver.reader import Reader
from chatlog import LogError, check_channel
from servicekit.errors import problem_of
from servicekit.shapes import PAGE_DEFAULT, PAGE_MAX, ChannelInfo, MessagesPage, Problem


class Health(msgspec.Struct, frozen=True):
    status: str
    connected: bool


@get("/healthz", sync_to_thread=False)
def healthz(state: State) -> Health:
    reader: Reader = state.reader
    return Health(status="ok", connected=reader.chatlog.connected)


@get("/readyz", sync_to_thread=False)
def readyz(state: State) -> Response[Health]:
    reader: Reader = state.reader
    ok = reader.ready and reader.chatlog.connected
    return Response(Health("ready" if ok else "not_ready", ok), status_code=200 if ok else 503)


@get("/messages/{channel:str}")
async def channel_messages(
    state: State,
    channel: FromPath[str],
    after: Annotated[int, QueryParameter(ge=0)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> MessagesPage:
    reader: Reader = state.reader
    check_channel(channel)
    info = await reader.chatlog.info()
    records, _ = await reader.chatlog.read_records(channel, after, limit, info.max_text)
    return MessagesPage(
        channel=channel,
        epoch=info.epoch,
        last_seq=info.last_seq,
        messages=[msgspec.Raw(r) for _, r in records],
    )


@get("/channels")
async def channels(state: State) -> list[ChannelInfo]:
    reader: Reader = state.reader
    stats = await reader.chatlog.channel_stats()
    return [ChannelInfo(s.channel, s.count, s.last_seq) for s in stats]


@get("/export/{channel:str}")
async def export(state: State, channel: FromPath[str]) -> Stream:
    reader: Reader = state.reader
    check_channel(channel)
    info = await reader.chatlog.info()

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for line in reader.export(channel, info.max_text, info.last_seq):
                yield line
        except LogError as exc:
            # Headers are gone already: end the body with an error line a reader can see.
            problem = problem_of(exc)
            yield msgspec.json.encode(Problem(problem.code, problem.detail)) + b"\n"

    return Stream(lines(), media_type="application/x-ndjson")


ROUTES = [healthz, readyz, channel_messages, channels, export]
