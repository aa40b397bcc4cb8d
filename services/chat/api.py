"""REST routes of a chat node. Reads come from the replica; sends go through the log.

Errors are raised, never answered here: ServiceError and the log's errors reach the
client through the one set of exception handlers (:mod:`servicekit.problems`).
"""

from typing import Annotated

import msgspec
from litestar import Request, Response, get, post, websocket
from litestar.connection import WebSocket
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter

from chat import history
from chat.node import Node
from chat.wire import Progress, SendResult, send_decoder
from chat.ws import CLOSE_GOING_AWAY, Session
from chatlog import DEFAULT_CHANNEL, check_channel
from servicekit.errors import ServiceError, bad_request
from servicekit.shapes import PAGE_DEFAULT, PAGE_MAX, ChannelInfo, MessagesPage


def _progress(node: Node, status: str) -> Progress:
    replica, follower = node.replica, node.follower
    return Progress(
        status=status,
        node_id=node.settings.node_id,
        applied=replica.applied,
        target=follower.target,
        epoch=replica.epoch,
        connected=follower.connected,
        skipped=sum(replica.skipped.values()),
        resets=follower.resets,
        snapshot_seq=follower.snapshot_seq,
        entries=replica.digest.count,
        digest=replica.digest.hexdigest(replica.max_text),
        append_only=node.log_state.append_only,
        log_full=node.log_state.full,
        log_stalled=node.log_state.stalled,
        log_usage=round(node.log_state.usage, 4),
    )


@get("/healthz", sync_to_thread=False)
def healthz(state: State) -> Response[Progress]:
    """Liveness: 503 once the follower has ended (a bug: it only ends when cancelled at
    shutdown), because only a restart gives such a node a live replica again."""
    node: Node = state.node
    alive = node.follower.alive
    return Response(
        _progress(node, "ok" if alive else "follower_stopped"), status_code=200 if alive else 503
    )


@get("/readyz", sync_to_thread=False)
def readyz(state: State) -> Response[Progress]:
    node: Node = state.node
    ready = node.ready
    return Response(
        _progress(node, "ready" if ready else "not_ready"), status_code=200 if ready else 503
    )


@get("/messages")
async def list_messages(
    state: State,
    channel: FromQuery[str] = DEFAULT_CHANNEL,
    after: Annotated[int, QueryParameter(ge=0)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
    min_seq: Annotated[int | None, QueryParameter(ge=0)] = None,
) -> MessagesPage:
    node: Node = state.node
    replica = node.replica
    check_channel(channel)
    wait = node.settings.min_seq_wait
    if min_seq is not None and not await replica.wait_applied(min_seq, wait):
        raise ServiceError(
            503,
            "not_caught_up",
            f"seq {min_seq} not applied within {wait}s (applied {replica.applied})",
        )
    page = await history.read(replica, node.chatlog, channel, after, limit)
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
    node: Node = state.node
    return await node.writer.send(req.channel, req.text, req.id, req.user, req.sent_at)


@get("/channels", sync_to_thread=False)
def list_channels(state: State) -> list[ChannelInfo]:
    node: Node = state.node
    return [
        ChannelInfo(channel=name, count=log.total, last_seq=log.last_seq)
        for name, log in sorted(node.replica.channels.items())
    ]


@websocket("/ws")
async def ws_endpoint(socket: WebSocket[object, object, State]) -> None:
    node: Node = socket.app.state.node
    hub = node.hub
    await socket.accept()
    if hub.draining:
        await socket.close(CLOSE_GOING_AWAY, "node shutting down")
        return
    session = Session(socket, node.replica, node.writer, node.settings, node.chatlog, hub.stats)
    hub.sessions.add(session)
    try:
        await session.run()
    finally:
        hub.sessions.discard(session)


HTTP_ROUTES = [healthz, readyz, list_messages, send_message, list_channels]
