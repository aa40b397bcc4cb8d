"""REST routes of a chat node. Reads come from the replica; sends go through the log.

Errors are raised, never answered here: ServiceError and the log's errors reach the
client through the one set of exception handlers (:mod:`servicekit.problems`).
"""

from typing import Annotated

import msgspec
from litestar import Request, Response, delete, get, post, put, websocket
from litestar.connection import WebSocket
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter

from auth import Gate
from auth.identity import Identity
from auth.web import handshake_headers, query_token
from chat import history
from chat.node import Node
from chat.wire import (
    GrantView,
    PresencePage,
    Progress,
    SendResult,
    encode_text,
    grant_decoder,
    send_decoder,
)
from chat.ws import CLOSE_GOING_AWAY, CLOSE_UNAUTHORIZED, Session, error_frame
from chatlog import DEFAULT_CHANNEL, check_channel
from servicekit.errors import ServiceError, bad_request
from servicekit.shapes import (
    CHANNELS_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    PRESENCE_MAX,
    SEQ_MAX,
    ChannelInfo,
    MessagesPage,
    Problem,
)
from servicekit.workers import LOCAL, Worker


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
        lag=node.lag,
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


@get("/readyz")
async def readyz(state: State, worker: FromQuery[str | None] = None) -> Response[Progress]:
    """With ``--workers``, ready only when every worker is: a client may land on any of
    them. ``?worker=self``: this worker alone (what the others ask)."""
    node: Node = state.node
    ready, status = node.readiness()
    workers: Worker | None = state.worker
    if ready and workers is not None and worker != LOCAL:
        answers = await workers.ask_others(f"/readyz?worker={LOCAL}")
        if any(body is None for body in answers.values()):
            ready, status = False, "workers_not_ready"
    return Response(_progress(node, status), status_code=200 if ready else 503)


def _gate(request: Request[object, object, State]) -> Gate:
    gate: Gate = request.app.state.node.gate
    gate.check_origin(request.headers)
    return gate


@get("/messages")
async def list_messages(
    request: Request[object, object, State],
    state: State,
    channel: FromQuery[str] = DEFAULT_CHANNEL,
    after: Annotated[int, QueryParameter(ge=0, le=SEQ_MAX)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
    min_seq: Annotated[int | None, QueryParameter(ge=0, le=SEQ_MAX)] = None,
    before: Annotated[int | None, QueryParameter(ge=1, le=SEQ_MAX)] = None,
) -> MessagesPage:
    node: Node = state.node
    replica = node.replica
    check_channel(channel)
    gate = _gate(request)
    gate.check_read(await gate.identify(request.headers), channel)
    wait = node.settings.min_seq_wait
    if min_seq is not None and replica.applied < min_seq:
        if replica.waiting >= node.settings.min_seq_waiters:
            node.refused["min_seq_waiters"] += 1
            raise ServiceError(
                503, "busy", f"{replica.waiting} reads are waiting for a seq already; retry "
                "(MIN_SEQ_WAITERS)",
            )  # fmt: skip
    if min_seq is not None and not await replica.wait_applied(min_seq, wait):
        raise ServiceError(
            503,
            "not_caught_up",
            f"seq {min_seq} not applied within {wait}s (applied {replica.applied})",
        )
    if before is None:
        page = await history.read(replica, node.chatlog, channel, after, limit)
    elif after:
        raise bad_request("invalid_query", "give after (the page after a seq) or before, not both")
    else:
        page = await history.read_before(replica, node.chatlog, channel, before, limit)
    return MessagesPage(
        channel=channel,
        epoch=replica.epoch or "",
        last_seq=replica.applied,
        messages=[msgspec.Raw(record_json) for _, record_json in page],
    )


@post("/messages", status_code=201)
async def send_message(request: Request[object, object, State], state: State) -> SendResult:
    gate = _gate(request)
    who = await gate.identify(request.headers)
    require_json(request)
    node: Node = state.node
    node.writer.admit(who, request.client.host if request.client else "")
    body = await request.body()
    try:
        req = send_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise bad_request("invalid_field", str(exc)) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise bad_request("invalid_json", "body is not a JSON object in UTF-8") from exc
    return await node.writer.send(who, req.channel, req.text, req.id, req.user, req.sent_at)


@get("/channels")
async def list_channels(
    request: Request[object, object, State],
    state: State,
    after: Annotated[str, QueryParameter(max_length=64)] = "",
    limit: Annotated[int, QueryParameter(ge=1, le=CHANNELS_MAX)] = CHANNELS_MAX,
) -> list[ChannelInfo]:
    """The channels the caller may read, in name order after ``after``, ``limit`` of them."""
    node: Node = state.node
    gate = _gate(request)
    who = await gate.identify(request.headers)
    may_read = gate.access.may_read
    channels = node.replica.channels
    online = node.presence.online
    names = sorted(name for name in channels if name > after and may_read(who, name))
    return [
        ChannelInfo(
            channel=name,
            count=channels[name].total,
            last_seq=channels[name].last_seq,
            online=online(name),
        )
        for name in names[:limit]
    ]


@get("/presence")
async def list_presence(
    request: Request[object, object, State],
    state: State,
    channel: FromQuery[str],
    after: Annotated[str, QueryParameter(max_length=64)] = "",
    limit: Annotated[int, QueryParameter(ge=1, le=PRESENCE_MAX)] = PRESENCE_MAX,
) -> PresencePage:
    """Who is in ``channel`` now, on every node: members in user order after ``after``,
    with their number of sockets, and how many there are. Whoever may read the channel
    may ask (as for its history)."""
    node: Node = state.node
    check_channel(channel)
    gate = _gate(request)
    gate.check_read(await gate.identify(request.headers), channel)
    presence = node.presence
    presence.require()
    members, more = presence.listing(channel, after, limit)
    online = presence.online(channel)
    return PresencePage(channel=channel, online=online, members=members, more=more)


@put("/admin/grants/{user:str}/{channel:str}")
async def put_grant(
    request: Request[object, object, State],
    state: State,
    user: FromPath[str],
    channel: FromPath[str],
) -> GrantView:
    """Give ``user`` read and/or send on ``channel`` (replaces what they had there)."""
    node: Node = state.node
    await _admin(request)
    require_json(request)
    check_channel(channel)
    try:
        grant = grant_decoder.decode(await request.body())
    except msgspec.ValidationError as exc:
        raise bad_request("invalid_field", str(exc)) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise bad_request("invalid_json", 'body is like {"read": true, "send": false}') from exc
    await node.policy.put(_user(user), channel, grant)
    return GrantView(user=user, channel=channel, read=grant.read, send=grant.send)


@delete("/admin/grants/{user:str}/{channel:str}", status_code=200)
async def delete_grant(
    request: Request[object, object, State],
    state: State,
    user: FromPath[str],
    channel: FromPath[str],
) -> GrantView:
    """Take back everything granted to ``user`` on ``channel``."""
    node: Node = state.node
    await _admin(request)
    check_channel(channel)
    await node.policy.put(_user(user), channel, None)
    return GrantView(user=user, channel=channel, read=False, send=False)


@get("/admin/grants/{user:str}")
async def list_grants(
    request: Request[object, object, State], state: State, user: FromPath[str]
) -> list[GrantView]:
    """What ``user`` was granted, as this node holds it (every node watches the grants)."""
    node: Node = state.node
    await _admin(request)
    return [
        GrantView(user=user, channel=channel, read=grant.read, send=grant.send)
        for channel, grant in sorted(node.gate.grants.of_user(_user(user)).items())
    ]


async def _admin(request: Request[object, object, State]) -> None:
    """The grants routes are for tokens with the admin claim."""
    gate = _gate(request)
    gate.check_admin(await gate.identify(request.headers))


def _user(user: str) -> str:
    if not 1 <= len(user) <= 64:
        raise bad_request("invalid_user", "a user name has 1 to 64 characters")
    return user


@websocket("/ws")
async def ws_endpoint(socket: WebSocket[object, object, State]) -> None:
    node: Node = socket.app.state.node
    hub = node.hub
    admitted, identity = await _handshake(socket, node)
    if not admitted:
        return
    session = Session(
        socket,
        node.replica,
        node.writer,
        node.settings,
        node.chatlog,
        hub.stats,
        node.gate,
        hub,
        identity,
    )
    hub.sessions.add(session)
    try:
        await session.run()
    finally:
        hub.sessions.discard(session)


async def _handshake(
    socket: WebSocket[object, object, State], node: Node
) -> tuple[bool, Identity | None]:
    """Accept the socket or refuse it (and close it): (admitted, the identity its
    handshake carried; None: it must send ``auth`` first). A function of its own, so
    nothing of the handshake stays referenced for the socket's life."""
    gate = node.gate
    headers = handshake_headers(socket.scope["headers"])
    if not gate.origin_allowed(headers):
        # Before accepting: the handshake is answered 403 and no frame is ever read.
        await socket.close(CLOSE_UNAUTHORIZED, "origin not allowed")
        return False, None
    await socket.accept()
    if node.hub.draining:
        await socket.close(CLOSE_GOING_AWAY, "node shutting down")
        return False, None
    token = query_token(socket.scope["query_string"])
    if token is None and "authorization" not in headers and gate.enabled:
        return True, None
    try:
        return True, await gate.identify(headers, token)
    except ServiceError as exc:
        await socket.send_text(encode_text(error_frame(exc, None)))
        await socket.close(CLOSE_UNAUTHORIZED, exc.detail[:120])
        return False, None


@get("/ws", sync_to_thread=False)
def ws_without_upgrade() -> Response[Problem]:
    """A plain GET of the WebSocket route: say what it is, rather than 405."""
    return Response(
        Problem("upgrade_required", "/ws is a WebSocket: connect with ws:// (or wss://) and "
                "send {\"op\": \"auth\", \"token\": ...} first"),
        status_code=426,
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )  # fmt: skip


def require_json(request: Request[object, object, State]) -> None:
    """Bodies are JSON, said so: a cross-site form or ``text/plain`` post (which a browser
    sends without asking the server first) is refused before it is read."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"send the body as application/json (got {media or 'no content-type'})",
        )


HTTP_ROUTES = [
    healthz,
    readyz,
    list_messages,
    send_message,
    list_channels,
    list_presence,
    put_grant,
    delete_grant,
    list_grants,
    ws_without_upgrade,
]
