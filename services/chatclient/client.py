"""An async client of a chat cluster that keeps the protocol's promises for its user.

- **Failover:** it connects to one node of a list and, when that node goes away
  (1001), drops it (1013, a broken connection) or dies, to the next one, with
  exponential backoff and jitter, so that a fleet's clients do not return at once.
- **No gap, no duplicate:** it keeps a cursor per channel (the last seq it handed
  over) and joins again with ``after`` = cursor on whichever node it reaches. A
  message at or below the cursor is dropped, so a resumed join that overlaps is
  harmless.
- **A new epoch** (the log was replaced: 1012, or a ``joined`` with another epoch)
  makes the cursors meaningless: they are dropped and every channel is joined
  again from its last 100 messages; the user gets :class:`EpochChanged`.
- **Sends are idempotent:** each gets an id, kept until its ack arrives, and sent
  again with the same id after a reconnect or a retryable error (the node answers a
  repeated id with the first seq and ``duplicate: true``). ``send`` returns the ack.
- **Presence:** a channel joined with ``presence=True`` keeps who is in it
  (:meth:`ChatClient.members`): the node's snapshot after each (re)join, then its
  join and leave frames, which are handed over as events too.
- **Tokens:** a callable token source is asked again when the node warns that the
  token expires (``refresh`` on the same socket) and when a node refuses it (4001,
  4002); with a fixed token, a refusal ends the client with :class:`AuthFailed`.

Everything runs in one task that owns the socket; the public methods only queue
frames, so they are safe to call while it reconnects.
"""

import asyncio
import inspect
import random
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import websockets

from chatclient.frames import (
    Ack,
    Authed,
    Connected,
    Disconnected,
    EpochChanged,
    Error,
    Event,
    Joined,
    Left,
    Message,
    Presence,
    PresenceJoin,
    PresenceLeave,
    TokenExpiring,
    decoder,
    encoder,
)

TokenSource = str | Callable[[], str | Awaitable[str | None] | None] | None

RETRYABLE = frozenset(
    {"rate_limited", "log_unavailable", "log_stalled", "stream_missing", "not_ready", "busy"}
)
"""Send errors after which the same send may succeed: it is sent again, same id."""
AUTH_CLOSES = frozenset({4001, 4002})


class Refused(Exception):
    """A node refused the request: ``code`` and ``detail`` are its answer's."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class SendFailed(Refused):
    """A send that retrying cannot fix (forbidden, too long, ...)."""


class AuthFailed(Exception):
    """A node refused the token and there is no way to get another one."""


class ClientClosed(Exception):
    """The client was closed before the send was acknowledged (it may still be stored:
    sending it again with the same id is safe)."""


@dataclass
class _Channel:
    cursor: int | None
    """The last seq handed to the user; None: join from the node's default (last 100)."""
    joins_sent: int = 0
    joins_seen: int = 0
    """Messages count only once the ``joined`` of the latest join has arrived: what an
    earlier join of the same channel still delivers is from a subscription that the
    node has replaced (a resume, or a join after a new epoch)."""
    presence: bool = False
    members: dict[str, int] | None = None
    """Who is in the channel (user: sockets), with ``presence``; None until the first
    snapshot."""


@dataclass
class _Pending:
    frame: bytes
    future: asyncio.Future[Ack]


class _Page(msgspec.Struct):
    messages: list[Message]


page_decoder = msgspec.json.Decoder(_Page)


def _get(url: str, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            body: bytes = resp.read()
            return body
    except urllib.error.HTTPError as exc:
        answer = exc.read()
        try:
            problem = msgspec.json.decode(answer)
            raise Refused(problem["error"], problem["detail"]) from None
        except (msgspec.DecodeError, KeyError, TypeError):
            raise Refused("http_error", f"{exc.code} {answer[:200]!r}") from None


def ws_url(node: str) -> str:
    return node.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"


class ChatClient:
    def __init__(
        self,
        nodes: Sequence[str],
        token: TokenSource = None,
        *,
        backoff: tuple[float, float] = (0.2, 10.0),
        first: int | None = None,
        open_timeout: float = 5.0,
        retry_delay: float = 1.0,
    ) -> None:
        """``nodes``: base URLs (``http://host:port``); the first tried is ``first`` or a
        random one. ``backoff``: (first delay, largest delay) in seconds."""
        if not nodes:
            raise ValueError("at least one node URL is needed")
        self._nodes = [n.rstrip("/") for n in nodes]
        self._token_source = token
        self._backoff = backoff
        self._next = random.randrange(len(self._nodes)) if first is None else first
        self._open_timeout = open_timeout
        self._retry_delay = retry_delay
        self._channels: dict[str, _Channel] = {}
        self._pending: dict[str, _Pending] = {}
        self._events: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()
        """Events in order; an exception ends ``events()`` with it, None ends it quietly."""
        self._failure: BaseException | None = None
        """Why the client stopped by itself (AuthFailed): sends after it raise this."""
        self._ws: websockets.ClientConnection | None = None
        self._epoch: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.Task[None]] = set()
        self._closed = False
        self.node: str | None = None
        """The node this client is connected to now, if any."""
        self.user: str | None = None
        """Who the node says we are (from ``authed``), once known."""
        self.connections = 0
        """Connections made so far (1 + reconnects)."""

    async def __aenter__(self) -> "ChatClient":
        self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop; sends still waiting raise ClientClosed, later ones too, and ``events()``
        ends."""
        if self._closed and self._failure is None:
            return
        self._closed = True
        self._events.put_nowait(None)
        for task in (self._task, *self._timers):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._task, *self._timers) if t), return_exceptions=True)
        self._fail_pending(ClientClosed("closed before the ack"))

    def _fail_pending(self, error: BaseException) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._pending.clear()

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise ClientClosed("the client is closed")
        self.start()

    def cursor(self, channel: str) -> int | None:
        state = self._channels.get(channel)
        return state.cursor if state else None

    def members(self, channel: str) -> dict[str, int] | None:
        """Who is in ``channel`` now (user: their sockets), for a channel joined with
        ``presence=True`` once its first snapshot has arrived. A joining user learned
        from a ``presence_join`` counts 1 until the next snapshot."""
        state = self._channels.get(channel)
        return dict(state.members) if state and state.members is not None else None

    async def join(self, channel: str, after: int | None = None, presence: bool = False) -> None:
        """Follow ``channel``: messages with seq > ``after`` (default: its last 100),
        then live ones, as :class:`Message` events, across reconnects. ``presence``:
        also who is in it (:meth:`members`, and :class:`Presence`, :class:`PresenceJoin`
        and :class:`PresenceLeave` events)."""
        self._check_open()
        state = _Channel(cursor=after, presence=presence)
        self._channels[channel] = state
        await self._join(channel, state)

    async def leave(self, channel: str) -> None:
        if self._channels.pop(channel, None) is not None:
            await self._write(encoder.encode({"op": "leave", "channel": channel}))

    async def send(self, channel: str, text: str, msg_id: str | None = None) -> Ack:
        """Store ``text`` on ``channel``; returns the ack (its seq) once the log has it.
        Raises SendFailed for what retrying cannot fix (forbidden, too long, ...)."""
        self._check_open()
        msg_id = msg_id or uuid.uuid4().hex
        frame = encoder.encode({"op": "send", "channel": channel, "text": text, "id": msg_id})
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = _Pending(frame, future)
        await self._write(frame)
        return await future

    async def history(
        self, channel: str, before: int | None = None, limit: int = 100
    ) -> list[Message]:
        """The ``limit`` messages of ``channel`` before seq ``before`` (default: the newest),
        ascending: the page to show above the oldest one shown. An empty list: no more.
        Asked of the node this client is connected to, else of each node in turn."""
        query = {"channel": channel, "limit": str(limit)}
        query["before"] = str(before if before is not None else 2**63 - 1)
        path = "/messages?" + urllib.parse.urlencode(query)
        headers = await self._auth_headers()
        order = [self.node] if self.node else []
        order += [n for n in self._nodes if n not in order]
        failures = []
        for node in order:
            try:
                body = await asyncio.to_thread(_get, node + path, headers)
            except OSError as exc:  # URLError is an OSError
                failures.append(f"{node}: {exc}")
                continue
            return page_decoder.decode(body).messages
        raise OSError("no node answered: " + "; ".join(failures))

    async def events(self) -> AsyncIterator[Event]:
        """Messages and connection events, in order; raises AuthFailed if the client had
        to stop."""
        while True:
            item = await self._events.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # The socket's owner.
    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            node = self._nodes[self._next % len(self._nodes)]
            code: int | None = None
            reason = ""
            try:
                token = await self._token()
                async with websockets.connect(ws_url(node), open_timeout=self._open_timeout) as ws:
                    self._ws, self.node = ws, node
                    self.connections += 1
                    self._events.put_nowait(Connected(node))
                    if token:
                        # As a first frame, not a header: the node answers it with
                        # `authed` (who we are), as it does for browsers.
                        await ws.send(encoder.encode({"op": "auth", "token": token}).decode())
                    await self._resume(ws)
                    async for raw in ws:
                        attempt = 0  # this node serves us
                        await self._on_frame(ws, raw)
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                reason = exc.rcvd.reason if exc.rcvd else "connection lost"
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws, self.node = None, None
            if self._closed:
                return
            if code in AUTH_CLOSES and not callable(self._token_source):
                self._failure = AuthFailed(f"{node} closed with {code}: {reason}")
                self._closed = True
                self._fail_pending(self._failure)
                self._events.put_nowait(self._failure)
                return
            if code != 1012:  # a new epoch is the cluster's, not this node's: stay
                self._next += 1
            delay = self._delay(attempt)
            attempt += 1
            self._events.put_nowait(Disconnected(node, code, reason, round(delay, 3)))
            await asyncio.sleep(delay)

    def _delay(self, attempt: int) -> float:
        """Exponential, with jitter over the upper half: clients of a node that went away
        spread their returns instead of arriving together."""
        first, largest = self._backoff
        if attempt == 0:
            return first * random.random()
        base = min(largest, first * 2.0**attempt)
        return base / 2 + random.random() * base / 2

    async def _auth_headers(self) -> dict[str, str]:
        token = await self._token()
        return {"authorization": f"Bearer {token}"} if token else {}

    async def _token(self) -> str | None:
        source = self._token_source
        if source is None or isinstance(source, str):
            return source
        value = source()
        return await value if inspect.isawaitable(value) else value

    async def _resume(self, ws: websockets.ClientConnection) -> None:
        # Joins before sends: a resumed channel's missed messages are requested first.
        for channel, state in self._channels.items():
            state.joins_seen = state.joins_sent = 0
            await self._join(channel, state, ws)
        for pending in list(self._pending.values()):
            await ws.send(pending.frame)

    async def _join(
        self, channel: str, state: _Channel, ws: websockets.ClientConnection | None = None
    ) -> None:
        frame: dict[str, Any] = {"op": "join", "channel": channel}
        if state.cursor is not None:
            frame["after"] = state.cursor
        if state.presence:
            frame["presence"] = True
        state.joins_sent += 1
        await self._write(encoder.encode(frame), ws)

    async def _write(self, frame: bytes, ws: websockets.ClientConnection | None = None) -> None:
        """Send now if connected; otherwise the reconnect sends it (joins and pending
        sends are state, replayed by ``_resume``)."""
        ws = ws or self._ws
        if ws is None:
            return
        try:
            await ws.send(frame.decode())
        except websockets.ConnectionClosed:
            pass  # _run sees the close and reconnects; _resume sends it then

    async def _on_frame(self, ws: websockets.ClientConnection, raw: str | bytes) -> None:
        frame = decoder.decode(raw)
        if isinstance(frame, Message):
            state = self._channels.get(frame.channel)
            if state is None or state.joins_seen < state.joins_sent:
                return
            if state.cursor is not None and frame.seq <= state.cursor:
                return  # already handed over (a resume that overlapped)
            state.cursor = frame.seq
            self._events.put_nowait(frame)
        elif isinstance(frame, Joined):
            await self._joined(frame, ws)
        elif isinstance(frame, Ack):
            pending = self._pending.pop(frame.id, None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(frame)
        elif isinstance(frame, Error):
            self._error(frame)
        elif isinstance(frame, Left):
            if frame.reason is not None:  # the node left for us (access revoked)
                self._channels.pop(frame.channel, None)
                self._events.put_nowait(frame)
        elif isinstance(frame, TokenExpiring):
            if callable(self._token_source):
                token = await self._token()
                await ws.send(encoder.encode({"op": "refresh", "token": token}).decode())
        elif isinstance(frame, Authed):
            self.user = frame.user
        else:
            self._on_presence(frame)

    def _on_presence(self, frame: Presence | PresenceJoin | PresenceLeave) -> None:
        state = self._channels.get(frame.channel)
        if state is None or not state.presence or state.joins_seen < state.joins_sent:
            return  # from a join since replaced, or a channel left
        if isinstance(frame, Presence):
            state.members = {m.user: m.count for m in frame.members}
        elif state.members is not None:
            # As set operations: a user may be listed as joining who is shown already.
            for user in frame.users:
                if isinstance(frame, PresenceJoin):
                    state.members.setdefault(user, 1)
                else:
                    state.members.pop(user, None)
        self._events.put_nowait(frame)

    async def _joined(self, frame: Joined, ws: websockets.ClientConnection) -> None:
        state = self._channels.get(frame.channel)
        if state is not None:
            state.joins_seen += 1
        if self._epoch is None:
            self._epoch = frame.epoch
        elif frame.epoch != self._epoch:
            # Seqs of the old log mean nothing in the new one: every channel starts over.
            self._epoch = frame.epoch
            self._events.put_nowait(EpochChanged(frame.epoch))
            for channel, other in self._channels.items():
                other.cursor = None
                await self._join(channel, other, ws)
            return
        if state is not None and state.joins_seen == state.joins_sent:
            self._events.put_nowait(frame)

    def _error(self, frame: Error) -> None:
        pending = self._pending.get(frame.id) if frame.id else None
        if pending is None:
            self._events.put_nowait(frame)  # a refused join: nothing else waits on it
            return
        if frame.code in RETRYABLE:
            timer = asyncio.create_task(self._resend(pending))
            self._timers.add(timer)
            timer.add_done_callback(self._timers.discard)
            return
        del self._pending[frame.id]  # type: ignore[arg-type]
        if not pending.future.done():
            pending.future.set_exception(SendFailed(frame.code, frame.detail))

    async def _resend(self, pending: _Pending) -> None:
        await asyncio.sleep(self._retry_delay * (0.5 + random.random()))
        if any(p is pending for p in self._pending.values()):
            await self._write(pending.frame)
