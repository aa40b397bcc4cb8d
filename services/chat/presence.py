"""Presence: who is in which channel now, on every node, and never in the log.

A user is present in a channel while one of their sockets, on any node, has joined
it. Each node knows the (channel, user) pairs of the sockets it holds and tells the
other nodes on core NATS (:mod:`chatlog.bus`), never JetStream: a replay of the log
must not bring back people who left long ago.

What a node publishes, from one task, so the others receive it in that order:

- ``changes``: the net change per (channel, user) of the last tick (0.1 s). A join
  and its leave within one tick cancel out.
- ``beat``: its whole set every PRESENCE_INTERVAL, in parts of at most
  ``PART_ENTRIES`` pairs. A node that started, or lost a message, has the truth again
  after one. A node that hears a node it did not know beats within a second, so a
  new node learns everyone at once rather than after an interval.
- ``bye`` when it stops: its users leave at once rather than after the TTL.

Every node holds every node's set (its *peers*) and serves their sum. A peer that
sends nothing for PRESENCE_TTL (killed, cut off) is dropped with its users. Each
message carries the sender's *instance* (random per process start) and a sequence
number: a new instance replaces what the node said before it died; a gap is counted
and mended by the next beat.

Volume per node: at most one ``changes`` per tick (10 a second) and
ceil(pairs / PART_ENTRIES) ``beat`` messages per interval, whatever the number of
sockets, channels or members. Sockets watching a channel get at most one
``presence_join`` and one ``presence_leave`` frame per tick, listing every user who
came or went, so a channel where 10,000 people arrive at once costs each watcher a
few frames, not 10,000.
"""

import asyncio
import bisect
import logging
import math
import secrets
from typing import Annotated, Protocol

import msgspec

from chat.settings import NodeSettings
from chat.wire import Frame, Member, PresenceJoin, PresenceLeave, encode_text
from chatlog import LogError
from chatlog.bus import Bus
from chatlog.records import UserName
from chatlog.retry import SERVICE, retry
from servicekit.errors import ServiceError

log = logging.getLogger("chat.presence")

PART_ENTRIES = 4000
"""Pairs per ``beat`` part: at most about 550 KB with the longest names, under NATS's
default 1 MB payload limit; about 120 KB with usual ones."""

Key = tuple[str, str]
"""(channel, user)"""

_Channel = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
_Count = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31)]
_Seq = Annotated[int, msgspec.Meta(ge=0)]
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class Entry(msgspec.Struct, frozen=True, array_like=True):
    channel: _Channel
    user: UserName
    count: _Count
    """Sockets (in a beat) or the change in sockets (in changes)."""


class Beat(msgspec.Struct, frozen=True, tag="beat", tag_field="k"):
    node: _Name
    instance: _Name
    seq: _Seq
    part: Annotated[int, msgspec.Meta(ge=0)]
    parts: Annotated[int, msgspec.Meta(ge=1)]
    entries: list[Entry]


class Changes(msgspec.Struct, frozen=True, tag="changes", tag_field="k"):
    node: _Name
    instance: _Name
    seq: _Seq
    entries: list[Entry]


class Bye(msgspec.Struct, frozen=True, tag="bye", tag_field="k"):
    node: _Name
    instance: _Name
    seq: _Seq


_decoder = msgspec.json.Decoder(Beat | Changes | Bye)
_encoder = msgspec.json.Encoder()


class Watcher(Protocol):
    """A socket that asked for a channel's live presence frames."""

    def presence(self, frame: Frame) -> None: ...


class Peer:
    """Another node, as its messages describe it."""

    __slots__ = ("entries", "instance", "next_part", "partial", "seen", "seq", "synced")

    def __init__(self, instance: str, seq: int, now: float) -> None:
        self.instance = instance
        self.seq = seq
        self.seen = now
        self.entries: dict[Key, int] = {}
        self.partial: dict[Key, int] | None = None
        """The beat being received, part by part (None: none, or a part was lost)."""
        self.next_part = 0
        self.synced = False
        """A whole beat arrived and no message was lost since: ``entries`` is exactly the
        node's set, and further beats only say it is alive (their parts are not applied:
        at 100,000 pairs a node, diffing every beat of every peer would cost a core)."""


class PresenceStats:
    __slots__ = ("expired", "gaps", "invalid", "received", "send_failed", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.invalid = 0
        self.gaps = 0
        self.expired = 0
        self.send_failed = 0


class Presence:
    """This node's sockets' presence, every other node's, and their sum (``members``)."""

    def __init__(self, settings: NodeSettings, bus: Bus | None) -> None:
        self.enabled = settings.presence_interval > 0 and bus is not None
        self._bus = bus
        self._node = settings.node_id
        self._instance = secrets.token_hex(8)
        self._interval = settings.presence_interval
        self._ttl = settings.presence_ttl
        self._tick = settings.presence_tick
        self._local: dict[Key, int] = {}
        """Sockets on this node per (channel, user)."""
        self._pending: dict[Key, int] = {}
        """Changes to ``_local`` not yet published."""
        self._peers: dict[str, Peer] = {}
        self.members: dict[str, dict[str, int]] = {}
        """channel -> user -> sockets on every node: what is served."""
        self._names: dict[str, list[str]] = {}
        """channel -> its users, sorted: a page is a bisect and a slice, whatever the
        channel's size (sorting 50,000 names for each request let one user stall a node)."""
        self._touched: dict[str, set[str]] = {}
        """Users whose presence changed this tick, by channel, for the watchers."""
        self._watchers: dict[str, set[Watcher]] = {}
        self._seq = 0
        self._beat_at = 0.0
        self._last_beat = -math.inf
        self.stats = PresenceStats()

    # What the node's sockets do.
    def add(self, channel: str, user: str) -> None:
        if self.enabled:
            self._local_change((channel, user), 1)

    def remove(self, channel: str, user: str) -> None:
        if self.enabled and self._local.get((channel, user), 0) > 0:
            self._local_change((channel, user), -1)

    def _local_change(self, key: Key, delta: int) -> None:
        count = self._local.get(key, 0) + delta
        if count > 0:
            self._local[key] = count
        else:
            self._local.pop(key, None)
        pending = self._pending.get(key, 0) + delta
        if pending:
            self._pending[key] = pending
        else:
            self._pending.pop(key, None)
        self._change(key, delta)

    def watch(self, channel: str, watcher: Watcher) -> None:
        self._watchers.setdefault(channel, set()).add(watcher)

    def unwatch(self, channel: str, watcher: Watcher) -> None:
        watchers = self._watchers.get(channel)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[channel]

    # What is served.
    def require(self) -> None:
        """404 ``presence_off`` for a question about presence on a node without it."""
        if not self.enabled:
            raise ServiceError(
                404, "presence_off", "presence is off on this node (PRESENCE_INTERVAL=0)"
            )

    def online(self, channel: str) -> int:
        return len(self.members.get(channel, ()))

    def listing(self, channel: str, after: str, limit: int) -> tuple[list[Member], bool]:
        """Members after ``after`` in code-point order, at most ``limit``; and whether
        there are more. Costs the page, not the channel."""
        users = self.members.get(channel, {})
        names = self._names.get(channel, [])
        start = bisect.bisect_right(names, after)
        page = names[start : start + limit]
        return [Member(user, users[user]) for user in page], start + limit < len(names)

    @property
    def entries(self) -> int:
        """(node, channel, user) entries held: this node's and every peer's."""
        return len(self._local) + sum(len(peer.entries) for peer in self._peers.values())

    @property
    def pairs(self) -> int:
        """(channel, user) pairs present on some node."""
        return sum(len(users) for users in self.members.values())

    @property
    def peers(self) -> int:
        return len(self._peers)

    # The sum, and the watchers' frames.
    def _change(self, key: Key, delta: int) -> None:
        channel, user = key
        users = self.members.get(channel)
        if users is None:
            users = self.members[channel] = {}
            self._names[channel] = []
        before = users.get(user, 0)
        after = before + delta
        if after > 0:
            users[user] = after
            if before <= 0:
                bisect.insort(self._names[channel], user)
        else:
            del users[user]
            names = self._names[channel]
            del names[bisect.bisect_left(names, user)]
            if not users:
                del self.members[channel], self._names[channel]
        if (before > 0) != (after > 0) and channel in self._watchers:
            self._touched.setdefault(channel, set()).add(user)

    def _tell_watchers(self) -> None:
        """One frame per channel for what changed this tick, built once, given to every
        watcher. Each user is listed as they are now: one who came and went within the
        tick is in ``presence_leave``, which a client applies as a set removal."""
        touched, self._touched = self._touched, {}
        for channel, users in touched.items():
            watchers = self._watchers.get(channel)
            if not watchers:
                continue
            here = self.members.get(channel, {})
            online = len(here)
            came = sorted(user for user in users if user in here)
            went = sorted(user for user in users if user not in here)
            frames = []
            if came:
                frames.append(Frame(encode_text(PresenceJoin(channel, came, online))))
            if went:
                frames.append(Frame(encode_text(PresenceLeave(channel, went, online))))
            for watcher in list(watchers):
                for frame in frames:
                    watcher.presence(frame)

    # Other nodes.
    def _set(self, peer: Peer, key: Key, count: int) -> None:
        old = peer.entries.get(key, 0)
        if count > 0:
            peer.entries[key] = count
        else:
            peer.entries.pop(key, None)
        if count != old:
            self._change(key, count - old)

    def _drop(self, node: str) -> None:
        peer = self._peers.pop(node, None)
        if peer is not None:
            for key in list(peer.entries):
                self._set(peer, key, 0)

    def receive(self, data: bytes) -> None:
        """A message from the bus (called on the event loop by nats-py)."""
        try:
            msg = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Only nodes may publish here: this is a bug or another version, not an attack.
            self.stats.invalid += 1
            log.warning("presence message not understood: %s", exc)
            return
        if msg.instance == self._instance:
            return  # our own, back from NATS
        self.stats.received += 1
        if msg.node == self._node:
            # A previous life of this node (its messages still in flight), or a second node
            # with our id (a misconfiguration): this process speaks for this node id.
            return
        now = asyncio.get_running_loop().time()
        peer = self._peers.get(msg.node)
        if isinstance(msg, Bye):
            if peer is not None and peer.instance == msg.instance:
                self._drop(msg.node)
            return
        if peer is None or peer.instance != msg.instance:
            # A node we have not heard, or one that restarted: what it said in a former
            # life is gone, and it has not heard us yet.
            self._drop(msg.node)
            peer = self._peers[msg.node] = Peer(msg.instance, msg.seq - 1, now)
            self._beat_soon(now)
        if msg.seq != peer.seq + 1:
            self.stats.gaps += 1  # a message was lost: the next beat mends it
            peer.partial, peer.synced = None, False
        peer.seq = msg.seq
        peer.seen = now
        if isinstance(msg, Changes):
            for entry in msg.entries:
                key = (entry.channel, entry.user)
                self._set(peer, key, max(peer.entries.get(key, 0) + entry.count, 0))
            return
        if peer.synced:
            return
        if msg.part == 0:
            peer.partial, peer.next_part = {}, 0
        if peer.partial is None or msg.part != peer.next_part:
            peer.partial = None  # a part was lost: wait for the next whole beat
            return
        for entry in msg.entries:
            if entry.count > 0:
                peer.partial[(entry.channel, entry.user)] = entry.count
        peer.next_part += 1
        if peer.next_part >= msg.parts:
            whole, peer.partial = peer.partial, None
            for key in [k for k in peer.entries if k not in whole]:
                self._set(peer, key, 0)
            for key, count in whole.items():
                self._set(peer, key, count)
            peer.synced = True

    def _beat_soon(self, now: float) -> None:
        # At most about once a second, however many nodes start at once.
        soon = max(now, self._last_beat + min(1.0, self._interval / 2))
        self._beat_at = min(self._beat_at, soon)

    def _expire(self, now: float) -> None:
        for node, peer in list(self._peers.items()):
            if now - peer.seen > self._ttl:
                log.info("presence of node %s expired (nothing for %.1fs)", node, now - peer.seen)
                self.stats.expired += 1
                self._drop(node)

    # The task.
    async def run(self) -> None:
        """Connects the bus (retrying for ever), then every tick: the watchers' frames,
        the changes or the beat, expired peers."""
        assert self._bus is not None
        bus = self._bus
        connecting = asyncio.create_task(
            retry(lambda: bus.connect(self.receive), SERVICE, "connect the presence bus")
        )
        loop = asyncio.get_running_loop()
        self._beat_at = loop.time()  # at once: what a former life of this node said goes
        last = loop.time()
        try:
            while True:
                await asyncio.sleep(self._tick)
                now = loop.time()
                late = now - last - self._tick
                last = now
                if late > self._tick:
                    # We did not run (paused, or a stalled loop): what the peers sent meanwhile
                    # is still unread, so their silence is not theirs. Counted in our own
                    # running time, none expires on our account (all would, and come back).
                    for peer in self._peers.values():
                        peer.seen += late
                self._expire(now)
                if bus.connected:
                    if now >= self._beat_at:
                        self._last_beat = now
                        self._beat_at = now + self._interval
                        await self._send_beat()
                    elif self._pending:
                        await self._send_changes()
                self._tell_watchers()
        finally:
            connecting.cancel()

    async def _send_beat(self) -> None:
        # A cut, taken with no await: the changes not yet sent, then the whole set as it
        # is after them, published in that order. A node that holds our set exactly
        # skips the beat's parts, so it needs those changes; one that applies the beat
        # gets them twice, harmlessly, since the beat replaces its state. Changes made
        # while the parts go out are after the cut: they follow in the next message.
        changes, self._pending = self._pending, {}
        pairs = list(self._local.items())
        if changes:
            await self._publish_changes(changes)
        parts = max(1, math.ceil(len(pairs) / PART_ENTRIES))
        for part in range(parts):
            chunk = pairs[part * PART_ENTRIES : (part + 1) * PART_ENTRIES]
            entries = [Entry(channel, user, count) for (channel, user), count in chunk]
            await self._publish(
                Beat(self._node, self._instance, self._next_seq(), part, parts, entries)
            )

    async def _send_changes(self) -> None:
        changes, self._pending = self._pending, {}
        await self._publish_changes(changes)

    async def _publish_changes(self, changes: dict[Key, int]) -> None:
        entries = [Entry(channel, user, count) for (channel, user), count in changes.items()]
        await self._publish(Changes(self._node, self._instance, self._next_seq(), entries))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _publish(self, msg: Beat | Changes | Bye) -> None:
        assert self._bus is not None
        try:
            await self._bus.publish(_encoder.encode(msg))
            self.stats.sent += 1
        except LogError as exc:
            # Lost: the others are wrong about us until a beat, so beat again soon.
            self.stats.send_failed += 1
            log.warning("presence not published: %s", exc.detail)
            self._beat_at = min(self._beat_at, asyncio.get_running_loop().time() + 1.0)

    async def stop(self) -> None:
        """Say ``bye`` (the others drop our users at once) and close the bus."""
        if self._bus is None:
            return
        if self._bus.connected:
            await self._publish(Bye(self._node, self._instance, self._next_seq()))
        await self._bus.close()
