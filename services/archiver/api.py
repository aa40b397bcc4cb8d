"""The archiver's REST routes. Errors reach clients through the one set of handlers."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from archiver.reader import Reader
from chatlog import LogError, check_channel
from servicekit.errors import problem_of
from servicekit.shapes import (
    CHANNELS_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    SEQ_MAX,
    ChannelInfo,
    MessagesPage,
    Problem,
)


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


async def _may_read(request: Request[Any, Any, State], channel: str) -> None:
    reader: Reader = request.app.state.reader
    gate = reader.gate
    gate.check_origin(request.headers)
    who = await gate.identify(request.headers)
    if who.user is not None and not (who.admin or who.read.match(channel)):
        await reader.grants.fetch(who.user, channel)  # the claims do not settle it
    gate.check_read(who, channel)


@get("/messages/{channel:str}")
async def channel_messages(
    request: Request[Any, Any, State],
    state: State,
    channel: FromPath[str],
    after: Annotated[int, QueryParameter(ge=0, le=SEQ_MAX)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> MessagesPage:
    reader: Reader = state.reader
    check_channel(channel)
    await _may_read(request, channel)
    info = await reader.chatlog.info()
    records, _ = await reader.chatlog.read_records(channel, after, limit, info.max_text)
    return MessagesPage(
        channel=channel,
        epoch=info.epoch,
        last_seq=info.last_seq,
        messages=[msgspec.Raw(r) for _, r in records],
    )


@get("/channels")
async def channels(
    request: Request[Any, Any, State],
    state: State,
    after: Annotated[str, QueryParameter(max_length=64)] = "",
    limit: Annotated[int, QueryParameter(ge=1, le=CHANNELS_MAX)] = CHANNELS_MAX,
) -> list[ChannelInfo]:
    """The channels the caller's token lets it read (grants are checked per channel on
    reads; listing them here would cost one lookup per channel)."""
    reader: Reader = state.reader
    gate = reader.gate
    gate.check_origin(request.headers)
    who = await gate.identify(request.headers)
    stats = await reader.chatlog.channel_stats(
        after, limit, lambda channel: gate.access.may_read(who, channel)
    )
    return [ChannelInfo(s.channel, s.count, s.last_seq) for s in stats]


@get("/export/{channel:str}")
async def export(request: Request[Any, Any, State], state: State, channel: FromPath[str]) -> Stream:
    reader: Reader = state.reader
    check_channel(channel)
    await _may_read(request, channel)
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
