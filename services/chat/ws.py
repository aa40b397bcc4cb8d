"""The WebSocket protocol: join/leave/send frames in, joined/message/ack/error frames out.

Each connection has one sender task and one bounded queue. A join queues a
"joined" frame and a catch-up marker; the sender reads history from the
replica page by page and, in the same step in which a read comes back empty,
switches the subscription to live. From then on the replica pushes each new
message. The cursor (last seq queued or written) guards both paths, so a resumed
client (``after``) sees no gap and no duplicate, on any node.

Writing: a message's frame is built once (:class:`chat.wire.Frame`) and, when the
socket's queue is empty, its sender idle and its transport taking data, written at
once by the push itself (servicekit.frames): no queue, no task wake-up, no framing
per socket. Otherwise it is queued, and the sender writes what waits in one call
(or through the ASGI send, which waits while the transport is paused). Either way
frames leave in queue order: the push writes only when nothing is queued before it.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, cast

import msgspec
from litestar import WebSocket

from auth import Gate, Identity
from chat import history
from chat.limits import RateLimited, refill
from chat.presence import Presence
from chat.replica import Replica
from chat.settings import NodeSettings
from chat.wire import (
    OPS,
    Ack,
    Auth,
    Authed,
    ErrorFrame,
    Frame,
    Join,
    Joined,
    Leave,
    Left,
    PresenceFrame,
    PresenceQuery,
    Refresh,
    Send,
    TokenExpiring,
    encode_text,
    frame_decoder,
    message_frame,
)
from chat.writes import Writer
from chatlog import ChatLog, LogError, check_channel
from servicekit.errors import ServiceError, problem_of
from servicekit.frames import FrameWriter, frame_writer, text_frame
from servicekit.shapes import PRESENCE_MAX

log = logging.getLogger("chat.ws")

HISTORY_DEFAULT = 100
PAGE = 256
BATCH_BYTES = 256 * 1024
"""At most this much of a socket's queue is written in one call."""
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4001
"""No token in time, a token we cannot accept, or a frame before the token."""
CLOSE_TOKEN_EXPIRED = 4002
"""The token expired and no ``refresh`` came."""


CLOSE_REASONS = {
    CLOSE_GOING_AWAY: "going_away",
    CLOSE_POLICY: "abuse",
    CLOSE_RESTART: "log_replaced",
    CLOSE_TRY_AGAIN: "overflow",
    CLOSE_UNAUTHORIZED: "unauthorized",
    CLOSE_TOKEN_EXPIRED: "token_expired",
}


def error_frame(exc: ServiceError | LogError, msg_id: str | None) -> ErrorFrame:
    """The WebSocket's one translation of an error: the same code and detail as over HTTP."""
    problem = problem_of(exc)
    return ErrorFrame(code=problem.code, detail=problem.detail, id=msg_id)


def _id_of(data: str | bytes) -> str | None:
    """The ``id`` of a frame that failed validation, if it is a JSON object with a string
    id (only on the error path: the frame is parsed a second time, loosely)."""
    try:
        loose = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    found = loose.get("id") if isinstance(loose, dict) else None
    return found[:128] if isinstance(found, str) else None


class WsStats:
    """Plain counters, read by the metrics callbacks at scrape time: nothing on the
    delivery path but an integer add."""

    __slots__ = ("closed", "delivered", "joins", "refused", "writes")

    def __init__(self, refused: Counter[str]) -> None:
        self.joins = 0
        self.delivered = 0
        self.writes: Counter[str] = Counter()
        """Writes by path: ``direct`` (by the push, at once), ``batched`` (the sender, what
        waited, in one call), ``awaited`` (the ASGI send: paused, closing, or no writer)."""
        self.closed: Counter[str] = Counter()
        self.refused = refused
        """The node's refusals by limit (shared with the writer and the connection guard)."""


class Subscription:
    __slots__ = ("channel", "cursor", "live", "present")

    def __init__(self, channel: str, cursor: int) -> None:
        self.channel = channel
        self.cursor = cursor  # last seq sent or queued for this channel
        self.live = False
        self.present = False
        """Counted in the channel's presence (an authenticated user's socket)."""


class Session:
    """One WebSocket connection."""

    # Slots: one of these per open socket (figure 5 counts every byte of an idle one).
    __slots__ = (
        "__weakref__", "_bad_in_a_row", "_chatlog", "_close", "_cork", "_frames", "_gate",
        "_hub", "_inflight", "_joins", "_mark", "_out", "_pages", "_receiving", "_replica",
        "_sender", "_sends", "_settings", "_stats", "_subs", "_timer", "_waiting", "_writer",
        "_ws", "address", "identity", "idle", "sent",
    )  # fmt: skip

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        replica: Replica,
        writer: Writer,
        settings: NodeSettings,
        chatlog: ChatLog,
        stats: WsStats,
        gate: Gate,
        hub: "Hub",
        identity: Identity | None,
    ) -> None:
        self._ws = socket
        self._gate = gate
        self._hub = hub
        self.identity: Identity | None = None
        """Who this socket is; None until its token is accepted."""
        self._timer: asyncio.TimerHandle | None = None
        """The one pending token deadline: the auth timeout, the refresh warning, expiry."""
        self._stats = stats
        self._chatlog = chatlog
        self._replica = replica
        self._writer = writer
        self._settings = settings
        self._subs: dict[str, Subscription] = {}
        self._out: deque[tuple[Subscription | None, Frame | None]] = deque()
        self._frames: FrameWriter | None = frame_writer(socket.scope)
        self._waiting: asyncio.Future[None] | None = None
        """The sender's wait for a frame (a bare future: an Event keeps a 0.6 KB deque
        per idle socket)."""
        self._close: tuple[int, str] | None = None
        self._bad_in_a_row = 0
        self._sends: set[asyncio.Task[None]] = set()
        self._inflight: asyncio.Semaphore | None = None
        """Sends awaiting their PubAck, at most WS_INFLIGHT_SENDS; made by the first send."""
        self._receiving = True
        self._sender: asyncio.Task[None] | None = None
        self._cork: list[bytes] | None = None
        """Frames of this turn of the event loop, written together at its end (one system
        call for all the messages a batch of the log brought this socket)."""
        client = socket.client
        self.address = client.host if client else ""
        self.sent = 0
        """Frames written: the hub's sweep closes a socket that takes none while it has some
        to take (a client that stopped reading) with 1013."""
        self.idle = True
        """The sender has nothing to write (it waits for the next frame)."""
        self._mark: tuple[int, float] | None = None
        """(frames written, when first seen so) while the sender is busy: the stall check."""
        loop = asyncio.get_running_loop()
        self._joins = (float(settings.ws_max_channels), loop.time())
        self._pages = (1.0, loop.time())
        if identity is not None:
            self._authenticated(identity, announce=False)  # the handshake carried it

    async def run(self) -> None:
        if self.identity is None:
            timeout = self._gate.settings.ws_auth_timeout
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(timeout, self._auth_timed_out, timeout)
        self._sender = asyncio.create_task(self._send_loop())
        receiver = asyncio.create_task(self._receive_loop())
        tasks = {self._sender, receiver}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if self._close is not None and not self._sender.done():
                # The receive side ended first because we are closing: let queued frames
                # (acks of in-flight sends, for a graceful close) go out first.
                await asyncio.wait({self._sender}, timeout=2.0)
        finally:
            self._disarm()
            self._hub.forget(self)
            for task in (*tasks, *self._sends):
                task.cancel()
            await asyncio.gather(*tasks, *self._sends, return_exceptions=True)
            for sub in self._subs.values():
                self._unsubscribe(sub)
            self._subs.clear()
        if self._close is not None:
            # The close frame queues behind what the socket already buffered; a client that
            # reads again sees all of it and then the code. One that never reads is dropped.
            self._uncork()  # before the close frame
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._settings.ws_close_timeout):
                    await self._ws.close(*self._close)

    def close(self, code: int, reason: str, flush: bool = True, label: str | None = None) -> None:
        """``label``: the reason in chat_ws_closed_total, when not the code's usual one."""
        if self._close is not None:
            return
        self._close = (code, reason)
        self._stats.closed[label or CLOSE_REASONS.get(code, str(code))] += 1
        self._receiving = False
        if not flush:
            self._out.clear()
            self._cork = None
            if self._sender is not None:
                self._sender.cancel()
        self._wake()

    async def drain(self, timeout: float) -> None:
        """Graceful close (SIGTERM): stop reading, let in-flight sends get their acks out,
        then close with 1001 so clients reconnect elsewhere and resume with ``after``."""
        self._receiving = False
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=timeout)
        self.close(CLOSE_GOING_AWAY, "node shutting down")

    # Listener protocol, called by the replica on the event loop.
    def push(self, channel: str, seq: int, frame: Frame) -> None:
        sub = self._subs.get(channel)
        if sub is None or not sub.live or seq <= sub.cursor:
            return
        sub.cursor = seq
        self._deliver(sub, frame)

    def _deliver(self, sub: Subscription | None, frame: Frame) -> None:
        cork = self._cork
        if cork is not None and not self._out:
            # Corked this turn, and nothing queued since (an answer): nothing is written
            # before the turn ends, so the transport's state is as the first frame found it.
            cork.append(frame.wire)
            self.sent += 1
            if sub is not None:
                self._stats.delivered += 1
            return
        writer = self._frames
        if (
            not self._out
            and self.idle
            and self._close is None
            and writer is not None
            and writer.can_write_frames()
        ):
            # Nothing is queued before it and the sender is not mid-write: in order. Corked
            # until the end of this turn of the loop (the rest of the log's batch).
            self._cork = [frame.wire]
            self._hub.cork(self)
            self.sent += 1
            if sub is not None:
                self._stats.delivered += 1
            return
        if len(self._out) >= self._settings.ws_queue:
            self.close(CLOSE_TRY_AGAIN, "client too slow; reconnect and join with after", False)
            return
        self._out.append((sub, frame))
        self._wake()

    def _wake(self) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def reset(self) -> None:
        self.close(CLOSE_RESTART, "the log was replaced; join again", flush=False)

    # Tokens: accepted, refreshed, expiring.
    def _authenticated(self, identity: Identity, announce: bool = True) -> None:
        if self.identity is None:
            self.identity = identity
            if not self._hub.register(self):
                self.identity = None
                limit = self._settings.ws_per_user
                self._queue(ErrorFrame(
                    code="too_many_sockets",
                    detail=f"at most {limit} WebSockets per user on this node (WS_PER_USER)",
                ))  # fmt: skip
                self.close(CLOSE_POLICY, "too many sockets", label="too_many_sockets")
                return
        else:
            self.identity = identity
            self.recheck()  # a refreshed token may allow less than the one before
        self._disarm()
        expires_at = None
        if identity.expires is not None:
            expires_at = int(identity.expires)
            left = identity.expires - time.time()
            ahead = min(self._gate.settings.refresh_ahead, max(left / 2, 0))
            self._arm(left - ahead, self._expiring, identity)
        if announce:
            self._queue(Authed(user=identity.user or "", expires_at=expires_at, name=identity.name))

    def _arm(self, delay: float, then: Callable[[Identity], None], identity: Identity) -> None:
        # One timer at a time (the warning, then the deadline): a handle is ~150 bytes
        # per idle socket.
        self._timer = asyncio.get_running_loop().call_later(delay, then, identity)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _auth_timed_out(self, timeout: float) -> None:
        if self.identity is None:
            self._queue(ErrorFrame(code="unauthorized", detail=f"no auth frame within {timeout}s"))
            self.close(CLOSE_UNAUTHORIZED, "no token")

    def _expiring(self, identity: Identity) -> None:
        if self.identity is identity and identity.expires is not None:
            left = identity.expires - time.time()
            self._queue(TokenExpiring(expires_in=round(max(left, 0), 1)))
            self._arm(left + self._gate.settings.leeway, self._expired, identity)

    def _expired(self, identity: Identity) -> None:
        if self.identity is identity:
            self.close(CLOSE_TOKEN_EXPIRED, "token expired; reconnect with a new one", False)

    def recheck(self) -> None:
        """Leave, for the client, every channel it may no longer read (a grant revoked, a
        refreshed token with fewer channels). The socket itself stays open."""
        who = self.identity
        if who is None:
            return
        for channel in [c for c in self._subs if not self._gate.access.may_read(who, c)]:
            self._unsubscribe(self._subs.pop(channel))
            self._queue(ErrorFrame(code="forbidden", detail=f"read access to {channel} ended"))
            self._queue(Left(channel=channel, reason="forbidden"))

    def _queue(self, frame: object) -> None:
        """An answer: always queued, never written at once. A client that sends frames (a
        flood of leaves) and reads none of the answers must fill WS_QUEUE and be closed,
        not cost the node a system call per answer until the kernel's buffers are full
        (seen: the abuse suite's /healthz p50 went from 8 to 52 ms). The sender writes
        what waits in one call."""
        if len(self._out) >= self._settings.ws_queue:
            self.close(CLOSE_TRY_AGAIN, "client too slow; reconnect and join with after", False)
            return
        self._out.append((None, Frame(encode_text(frame))))
        self._wake()

    def presence(self, frame: Frame) -> None:
        """A presence frame built once for every watcher of a channel: delivered as a
        message is (at once, or queued against WS_QUEUE)."""
        self._deliver(None, frame)

    def _uncork(self) -> None:
        """Write what was corked. Called at the end of the loop's turn by the hub, and by
        anything about to write after it (the sender, the close)."""
        cork, self._cork = self._cork, None
        if cork and self._frames is not None and self._frames.can_write_frames():
            self._frames.write_frames(b"".join(cork) if len(cork) > 1 else cork[0])
            self._stats.writes["direct"] += 1

    async def _send_loop(self) -> None:
        while True:
            self._uncork()  # what was corked came first
            if self._out:
                writer = self._frames
                if writer is not None and writer.can_write_frames() and self._write_batch(writer):
                    continue
                sub, frame = self._out.popleft()
                if sub is not None and self._subs.get(sub.channel) is not sub:
                    continue  # left or re-joined since this was queued
                if frame is None:
                    assert sub is not None
                    await self._catch_up(sub)
                else:
                    await self._ws.send_text(frame.text)  # waits while the transport is paused
                    self.sent += 1
                    self._stats.writes["awaited"] += 1
                    if sub is not None:
                        self._stats.delivered += 1
                continue
            if self._close is not None:
                return
            self.idle = True
            # Nothing awaited since the checks above: a frame queued from here on wakes us.
            self._waiting = asyncio.get_running_loop().create_future()
            try:
                await self._waiting
            finally:
                self._waiting = None
                self.idle = False

    def _write_batch(self, writer: FrameWriter) -> bool:
        """What waits at the head of the queue, up to a catch-up marker, in one write.
        False if the head is a marker (the caller catches up)."""
        out, subs = self._out, self._subs
        chunks: list[bytes] = []
        size = messages = taken = 0
        while out and size < BATCH_BYTES:
            sub, frame = out[0]
            if frame is None:
                break
            out.popleft()
            taken += 1
            if sub is not None:
                if subs.get(sub.channel) is not sub:
                    continue  # left or re-joined since this was queued
                messages += 1
            wire = frame.wire
            chunks.append(wire)
            size += len(wire)
        if chunks:
            writer.write_frames(b"".join(chunks))
            self.sent += len(chunks)
            self._stats.delivered += messages
            self._stats.writes["batched"] += 1
        return taken > 0

    async def _write_page(self, sub: Subscription, page: list[tuple[int, str]]) -> None:
        """Catch-up: a page of stored records, in one write when the transport takes it,
        else one awaited send each (the client reads slowly: wait for it)."""
        writer = self._frames
        if writer is not None and writer.can_write_frames():
            writer.write_frames(
                b"".join(text_frame(message_frame(record).encode()) for seq, record in page)
            )
            sub.cursor = page[-1][0]
            self.sent += len(page)
            self._stats.delivered += len(page)
            self._stats.writes["batched"] += 1
            await asyncio.sleep(0)  # a long catch-up must not hold the event loop
            return
        for seq, record_json in page:
            await self._ws.send_text(message_frame(record_json))
            sub.cursor = seq
            self.sent += 1
            self._stats.delivered += 1
            self._stats.writes["awaited"] += 1

    async def _catch_up(self, sub: Subscription) -> None:
        while self._subs.get(sub.channel) is sub and self._close is None:
            if sub.cursor < self._replica.dropped_through(sub.channel):
                # Older than what this node holds: from the log, then loop and look again
                # (the replica may have dropped more while we were awaiting).
                await self._pace_history()
                try:
                    old = await history.read(
                        self._replica, self._chatlog, sub.channel, sub.cursor, PAGE
                    )
                except LogError as exc:
                    # The client resumes with `after` elsewhere or later: nothing is skipped.
                    self.close(CLOSE_TRY_AGAIN, f"history unavailable: {exc.detail}"[:120])
                    return
                newer = [(seq, record) for seq, record in old if seq > sub.cursor]
                if newer:
                    await self._write_page(sub, newer)
                continue
            page = self._replica.read(sub.channel, sub.cursor, PAGE)
            if not page:
                # No await between this empty read and going live: the next message
                # applied to this channel is pushed, and nothing before it is missed.
                sub.live = True
                return
            await self._write_page(sub, page)

    async def _pace_history(self) -> None:
        """Log reads of one socket at most WS_HISTORY_RATE pages a second: the pages wait,
        they are not refused (the client asked for them once, with its join)."""
        rate = self._settings.history_rate
        if rate <= 0:
            return
        loop = asyncio.get_running_loop()
        tokens, last = self._pages
        now = loop.time()
        tokens = refill(tokens, last, now, rate, 1.0)
        if tokens < 1.0:
            self._stats.refused["history_rate"] += 1  # delayed, not refused
            await asyncio.sleep((1.0 - tokens) / rate)
            now, tokens = loop.time(), 1.0
        self._pages = (tokens - 1.0, now)

    def check_stall(self, now: float, limit: float) -> None:
        """The hub's sweep, once a second: a socket that had frames to write but took none
        for ``limit`` seconds is closed with 1013 (it resumes with ``after``). Without this,
        a client that stops reading during a long catch-up ends with uvicorn's keepalive
        1011 after 40 s instead."""
        if self.idle or self._close is not None:
            self._mark = None
        elif self._mark is None or self._mark[0] != self.sent:
            self._mark = (self.sent, now)
        elif now - self._mark[1] >= limit:
            self.close(CLOSE_TRY_AGAIN, "client too slow; reconnect and join with after", False)

    async def _receive_loop(self) -> None:
        while self._receiving:
            event = await self._ws.receive()
            if event["type"] == "websocket.disconnect":
                self._receiving = False
                return
            data = cast("str | bytes", event.get("text") or event.get("bytes") or b"")
            if self._receiving:
                await self._handle(data)

    async def _handle(self, data: str | bytes) -> None:
        try:
            frame = frame_decoder.decode(data)
        except msgspec.ValidationError as exc:
            detail = str(exc)
            if "`$.op`" in detail:
                detail += f"; op is one of: {OPS}"
            # A send that failed validation (empty text, ...) still names its id when it
            # has one: a client waits on that id for an ack or an error.
            self._bad(ErrorFrame(code="invalid_frame", detail=detail, id=_id_of(data)))
            return
        except (msgspec.DecodeError, UnicodeDecodeError):
            self._bad(ErrorFrame(code="invalid_json", detail="frame is not a JSON object"))
            return
        try:
            if isinstance(frame, Auth | Refresh):
                await self._auth(frame)
            elif self.identity is None:
                self._queue(ErrorFrame(code="unauthorized", detail="send auth first"))
                self.close(CLOSE_UNAUTHORIZED, "no token")
                return
            elif isinstance(frame, Join | PresenceQuery):
                try:
                    # A presence query costs what a join does (a listing), and counts so.
                    self._take_join()
                except RateLimited as exc:
                    await self._refused(exc, None)
                    return
                if isinstance(frame, Join):
                    self._join(frame, self.identity)
                else:
                    self._gate.check_read(self.identity, check_channel(frame.channel))
                    self._queue(self._presence_snapshot(frame.channel, frame.after))
            elif isinstance(frame, Leave):
                self._leave(frame)
            else:
                try:
                    client = self._ws.client
                    self._writer.admit(self.identity, client.host if client else "")
                except RateLimited as exc:
                    await self._refused(exc, frame.id)
                    return
                self._writer.check(self.identity, frame.channel, frame.text, frame.user)
                if self._inflight is None:
                    self._inflight = asyncio.Semaphore(self._settings.ws_inflight_sends)
                await self._inflight.acquire()
                task = asyncio.create_task(self._send(frame))
                self._sends.add(task)
                task.add_done_callback(self._sent)
        except (ServiceError, LogError) as exc:
            self._bad(error_frame(exc, getattr(frame, "id", None)))
            return
        self._bad_in_a_row = 0

    async def _refused(self, exc: RateLimited, msg_id: str | None) -> None:
        """Not a bad frame: the client is told when to retry, and the socket stays. Its
        next frame is read only then: a flood waits in the client's own buffers (TCP
        pushes back) instead of costing this node a refusal per frame. A WebSocket
        flooding as fast as it could once took the node's whole event loop."""
        self._queue(error_frame(exc, msg_id))
        await asyncio.sleep(exc.retry_after)

    async def reverify(self) -> None:
        """The key set changed: a token whose key left it no longer admits this socket."""
        who = self.identity
        if who is None or who.token is None or self._close is not None:
            return
        try:
            await self._gate.identify({}, who.token)
        except ServiceError as exc:
            self._queue(error_frame(exc, None))
            self.close(CLOSE_UNAUTHORIZED, exc.detail[:120])

    async def _auth(self, frame: Auth | Refresh) -> None:
        try:
            identity = await self._gate.identify({}, frame.token)
        except ServiceError as exc:
            if self.identity is None:
                self._queue(error_frame(exc, None))
                self.close(CLOSE_UNAUTHORIZED, exc.detail[:120])
                return
            raise  # a bad refresh is an error frame; the current token stays
        if self.identity is not None and identity.user != self.identity.user:
            raise ServiceError(403, "forbidden", "a refresh must be for the same user")
        self._authenticated(identity)

    def _bad(self, frame: ErrorFrame) -> None:
        self._queue(frame)
        if self.identity is None:  # nothing but a token is read before the token
            self.close(CLOSE_UNAUTHORIZED, "no token")
            return
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= self._settings.ws_bad_frames:
            self.close(CLOSE_POLICY, f"{self._bad_in_a_row} bad frames in a row")

    def _take_join(self) -> None:
        rate = self._settings.join_rate
        if rate <= 0:
            return
        now = asyncio.get_running_loop().time()
        tokens = refill(*self._joins, now, rate, float(self._settings.ws_max_channels))
        if tokens < 1.0:
            self._joins = (tokens, now)
            self._stats.refused["join_rate"] += 1
            retry = (1.0 - tokens) / rate
            raise RateLimited(retry, f"{rate:g} joins/s on this socket", "WS_JOIN_RATE")
        self._joins = (tokens - 1.0, now)

    def _join(self, frame: Join, who: Identity) -> None:
        channel = check_channel(frame.channel)
        self._gate.check_read(who, channel)
        epoch = self._replica.epoch
        if epoch is None:
            raise ServiceError(503, "not_ready", "this node has not loaded the log yet; retry")
        if frame.after is not None and frame.after < 0:
            raise ServiceError(400, "invalid_after", "after must be >= 0")
        if frame.presence:
            self._hub.presence.require()
        if channel not in self._subs and len(self._subs) >= self._settings.ws_max_channels:
            raise ServiceError(
                400, "too_many_channels", f"at most {self._settings.ws_max_channels} channels"
            )
        after = frame.after
        if after is None:
            after = self._replica.default_after(channel, HISTORY_DEFAULT)
        sub = Subscription(channel, after)
        old = self._subs.get(channel)
        self._subs[channel] = sub
        self._stats.joins += 1
        presence = self._hub.presence
        if old is not None:
            sub.present = old.present  # a join again: the same socket, counted once
        elif who.user is not None and presence.enabled:
            presence.add(channel, who.user)
            sub.present = True
        self._replica.listen(channel, self)
        self._queue(Joined(channel=channel, epoch=epoch, last_seq=self._replica.applied))
        if frame.presence:
            # The snapshot and the watch in one step: every change after it is in a frame.
            self._queue(self._presence_snapshot(channel, ""))
            presence.watch(channel, self)
        else:
            presence.unwatch(channel, self)
        self._out.append((sub, None))  # the catch-up, by the sender
        self._wake()

    def _presence_snapshot(self, channel: str, after: str) -> PresenceFrame:
        self._hub.presence.require()
        presence = self._hub.presence
        members, more = presence.listing(channel, after, PRESENCE_MAX)
        return PresenceFrame(channel, presence.online(channel), members, more)

    def _leave(self, frame: Leave) -> None:
        channel = check_channel(frame.channel)
        sub = self._subs.pop(channel, None)
        if sub is not None:
            self._unsubscribe(sub)
        self._queue(Left(channel=channel))

    def _unsubscribe(self, sub: Subscription) -> None:
        """The socket is no longer in ``sub``'s channel: no messages, no presence."""
        self._replica.unlisten(sub.channel, self)
        presence = self._hub.presence
        presence.unwatch(sub.channel, self)
        if sub.present and self.identity is not None and self.identity.user is not None:
            presence.remove(sub.channel, self.identity.user)

    async def _send(self, frame: Send) -> None:
        assert self.identity is not None
        try:
            result = await self._writer.send(
                self.identity, frame.channel, frame.text, frame.id, frame.user, frame.sent_at
            )
        except (ServiceError, LogError) as exc:
            self._queue(error_frame(exc, frame.id))
        else:
            self._queue(Ack(id=result.id, seq=result.seq, duplicate=result.duplicate))

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        assert self._inflight is not None
        self._inflight.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("send task failed", exc_info=task.exception())


class Hub:
    """Every open session, so that shutdown, epoch changes and revocations reach them."""

    def __init__(self, settings: NodeSettings, refused: Counter[str], presence: Presence) -> None:
        self.sessions: set[Session] = set()
        self.presence = presence
        self.by_user: dict[str, set[Session]] = {}
        """Authenticated sockets by user; in anonymous mode by ``addr:`` client address."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._settings = settings
        self.draining = False
        self.stats = WsStats(refused)
        self._corked: list[Session] = []

    @staticmethod
    def _key(session: Session) -> str | None:
        who = session.identity
        if who is None:
            return None
        return who.user if who.user is not None else f"addr:{session.address}"

    def cork(self, session: Session) -> None:
        """``session`` holds frames to write at the end of this turn of the event loop."""
        if not self._corked:
            asyncio.get_running_loop().call_soon(self._uncork_all)
        self._corked.append(session)

    def _uncork_all(self) -> None:
        corked, self._corked = self._corked, []
        for session in corked:
            session._uncork()

    def register(self, session: Session) -> bool:
        """Count ``session`` as its user's, or False: the user holds WS_PER_USER already."""
        key = self._key(session)
        assert key is not None
        mine = self.by_user.setdefault(key, set())
        limit = self._settings.ws_per_user
        if limit and len(mine) >= limit:
            self.stats.refused["ws_per_user"] += 1
            return False
        mine.add(session)
        return True

    def forget(self, session: Session) -> None:
        key = self._key(session)
        mine = self.by_user.get(key) if key is not None else None
        if mine is not None:
            mine.discard(session)
            if not mine:
                del self.by_user[key]  # type: ignore[arg-type]

    async def watch_stalls(self) -> None:
        """The sweep of :meth:`Session.check_stall`, once a second, for the node's life."""
        limit = self._settings.ws_send_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, limit / 2))
            now = loop.time()
            for session in list(self.sessions):
                session.check_stall(now, limit)

    def recheck(self, user: str) -> None:
        """A grant of ``user`` changed: each of their sockets leaves what it may no longer
        read."""
        for session in list(self.by_user.get(user, ())):
            session.recheck()

    def keys_changed(self) -> None:
        """The token keys changed: every socket's token is verified again (one signature
        check per distinct token), and those whose key is gone are closed with 4001."""
        task = asyncio.create_task(self._reverify_all())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reverify_all(self) -> None:
        for session in list(self.sessions):
            await session.reverify()

    async def drain(self, timeout: float) -> None:
        self.draining = True
        sessions = list(self.sessions)
        await asyncio.gather(*(s.drain(timeout) for s in sessions), return_exceptions=True)
