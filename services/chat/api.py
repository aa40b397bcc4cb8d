"""REST routes of a chat node. Reads come from the replica; sends go through the log."""

from typing import Annotated

import msgspec
from litestar import Request, Response, get, post, websocket
from litestar.connection import WebSocket
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter

from chat import history
from chat.follower import Follower
from chat.replica import Replica
from chat.settings import NodeSettings
from chat.wire import Progress, SendResult, send_decoder
from chat.writes import Writer
from chat.ws import CLOSE_GOING_AWAY, Hub, Session
from chatlog import DEFAULT_CHANNEL, LogError, check_channel
from servicekit.errors import ServiceError, bad_request, from_log_error
from servicekit.wire import ChannelInfo, MessagesPage

MAX_LIMIT = 1000


def _progress(state: State, status: str) -> Progress:
    settings: NodeSettings = state.settings
    follower: Follower = state.follower
    replica: Replica = state.replica
    return Progress(
        status=status,
        node_id=settings.node_id,
        applied=replica.applied,
        target=follower.target,
        epoch=replica.epoch,
        connected=follower.connected,
        skipped=sum(replica.skipped.values()),
        resets=follower.resets,
        snapshot_seq=follower.snapshot_seq,
    )


@get("/healthz", sync_to_thread=False)
def healthz(state: State) -> Progress:
    return _progress(state, "ok")


@get("/readyz", sync_to_thread=False)
def readyz(state: State) -> Response[Progress]:
    follower: Follower = state.follower
    hub: Hub = state.hub
    ready = follower.ready and not hub.draining
    return Response(
        _progress(state, "ready" if ready else "not_ready"), status_code=200 if ready else 503
    )


@get("/messages")
async def list_messages(
    state: State,
    channel: FromQuery[str] = DEFAULT_CHANNEL,
    after: Annotated[int, QueryParameter(ge=0)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 100,
    min_seq: Annotated[int | None, QueryParameter(ge=0)] = None,
) -> MessagesPage:
    replica: Replica = state.replica
    settings: NodeSettings = state.settings
    try:
        check_channel(channel)
    except LogError as exc:
        raise from_log_error(exc) from exc
    if min_seq is not None and not await replica.wait_applied(min_seq, settings.min_seq_wait):
        raise ServiceError(
            503,
            "not_caught_up",
            f"seq {min_seq} not applied within {settings.min_seq_wait}s"
            f" (applied {replica.applied})",
        )
    page = await history.read(replica, state.follower, channel, after, limit)
    return MessagesPage(
        channel=channel,
        epoch=replica.epoch or "",
        last_seq=replica.applied,
        messages=[msgspec.Raw(record_json) for _, record_json in page],
    )


@post("/messages", status_code=201)
async def send_message(request: Request[object, object, State], state: State) -> SendResult:
    body = await request.body()
    try:
        req = send_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise bad_request("invalid_field", str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise bad_request("invalid_json", "body is not a JSON object") from exc
    writer: Writer = state.writer
    return await writer.send(req.channel, req.text, req.id, req.user, req.sent_at)


@get("/channels", sync_to_thread=False)
def list_channels(state: State) -> list[ChannelInfo]:
    replica: Replica = state.replica
    return [
        ChannelInfo(channel=name, count=log.total, last_seq=log.last_seq)
        for name, log in sorted(replica.channels.items())
    ]


@websocket("/ws")
async def ws_endpoint(socket: WebSocket[object, object, State]) -> None:
    state = socket.app.state
    hub: Hub = state.hub
    await socket.accept()
    if hub.draining:
        await socket.close(CLOSE_GOING_AWAY, "node shutting down")
        return
    session = Session(
        socket, state.replica, state.writer, state.settings, state.follower, hub.stats
    )
    hub.sessions.add(session)
    try:
        await session.run()
    finally:
        hub.sessions.discard(session)


HTTP_ROUTES = [healthz, readyz, list_messages, send_message, list_channels]
