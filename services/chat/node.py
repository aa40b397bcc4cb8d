"""A chat node's parts, created once and shared by its routes, and their lifecycle."""

from collections import Counter
from dataclasses import dataclass

from opentelemetry.metrics import Meter

from auth import Gate
from chat.follower import Follower
from chat.grants import Policy
from chat.limits import SendLimiter
from chat.logstate import LogState
from chat.presence import Presence
from chat.replica import Replica
from chat.saver import Saver
from chat.settings import NodeSettings
from chat.writes import SendMetrics, Writer
from chat.ws import Hub
from chatlog import ChatLog
from chatlog.bus import Bus
from chatlog.roles import NODE
from chatlog.stream import DEFAULT_MAX_TEXT
from options import ConfigError
from servicekit.connections import Guard
from servicekit.tasks import Background
from servicekit.workers import Worker


def readiness(caught_up: bool, lag: int, max_lag: int) -> tuple[bool, str]:
    """(ready, status) for /readyz. A node merely behind the log stays ready and says
    ``lagging``: a whole fleet going unready at once under a burst would be worse than
    serving a little late. Only beyond ``max_lag`` (READY_MAX_LAG, when set) is it not."""
    if not caught_up:
        return False, "not_ready"
    if lag <= 0:
        return True, "ready"
    return (max_lag == 0 or lag <= max_lag), "lagging"


@dataclass(frozen=True)
class Node:
    settings: NodeSettings
    chatlog: ChatLog
    """The one log handle: the follower, the writer, history reads and the saver share it."""
    replica: Replica
    follower: Follower
    writer: Writer
    hub: Hub
    background: Background
    """The node's tasks (follower, snapshot saver): started by ``start``, ended by ``stop``."""
    log_state: LogState
    """The stream as last seen (limits, append-only) and whether sends are refused as full."""
    gate: Gate
    """Tokens, origins and permissions: every route and socket asks it."""
    policy: Policy
    """The grants, watched from the bucket beside the log."""
    guard: Guard
    """Connection limits: the server's protocol class and its sweep come from it."""
    refused: Counter[str]
    """Requests and sockets refused by a limit, by reason (chat_limits_refused_total)."""
    presence: Presence
    """Who is in which channel, on every node (core NATS beside the log, never in it)."""
    worker: Worker | None = None
    """One of ``--workers``: only the first saves snapshots."""

    @classmethod
    def create(
        cls, settings: NodeSettings, meter: Meter, tracing: bool, worker: Worker | None = None
    ) -> "Node":
        chatlog = ChatLog(settings.log, name=f"chat-node {settings.node_id}", role=NODE)
        # The text limit is the log's own: the replica takes it from the stream at bootstrap.
        replica = Replica(DEFAULT_MAX_TEXT, settings.keep_per_channel)
        log_state = LogState()
        gate = Gate(settings.auth)  # ConfigError without keys, unless --no-auth
        refused: Counter[str] = Counter()
        if settings.presence_interval and settings.presence_ttl < 2 * settings.presence_interval:
            raise ConfigError(
                f"PRESENCE_TTL ({settings.presence_ttl:g}s) must be at least twice "
                f"PRESENCE_INTERVAL ({settings.presence_interval:g}s): one lost heartbeat "
                "must not make a node's users vanish"
            )
        bus = Bus(settings.log, f"chat-node {settings.node_id} presence", NODE)
        presence = Presence(settings, bus if settings.presence_interval else None)
        hub = Hub(settings, refused, presence)
        return cls(
            settings=settings,
            chatlog=chatlog,
            replica=replica,
            follower=Follower(settings, replica, chatlog, log_state),
            writer=Writer(
                chatlog,
                replica,
                log_state,
                SendMetrics(meter),
                tracing,
                gate,
                SendLimiter(settings.send_rate, settings.send_burst, refused),
            ),
            hub=hub,
            background=Background(),
            log_state=log_state,
            gate=gate,
            policy=Policy(chatlog, gate.grants, hub),
            guard=Guard(settings.connections, refused),
            refused=refused,
            presence=presence,
            worker=worker,
        )

    @property
    def lag(self) -> int:
        """Messages the log holds that this replica has not applied, as of the watchdog's
        last look at the stream (once a second)."""
        return max(self.follower.stream_last_seq - self.replica.applied, 0)

    def readiness(self) -> tuple[bool, str]:
        """The /readyz answer: the follower runs and has caught up once, the grants are
        loaded, we are not draining, and the lag is within READY_MAX_LAG."""
        grants = self.policy.loaded or not self.gate.enabled
        caught_up = self.follower.ready and grants and not self.hub.draining
        return readiness(caught_up, self.lag, self.settings.ready_max_lag)

    @property
    def ready(self) -> bool:
        return self.readiness()[0]

    @property
    def saves_snapshots(self) -> bool:
        # A bounded node holds only the newest records: its state is not the whole log's.
        # Without a secret to sign with, no node could trust what it saved.
        return (
            (self.worker is None or self.worker.index == 0)  # one saver per node is enough
            and self.settings.snapshot_every > 0
            and self.settings.keep_per_channel is None
            and self.chatlog.snapshots_enabled
        )

    async def start(self) -> None:
        await self.gate.start()
        if self.gate.verifier is not None:
            self.gate.verifier.on_change.append(self.hub.keys_changed)
        self.background.start("follower", self.follower.run())
        self.background.start("stalled sockets", self.hub.watch_stalls())
        if self.presence.enabled:
            self.background.start("presence", self.presence.run())
        if self.gate.enabled:
            self.background.start("grants", self.policy.run())
        if self.gate.verifier is not None and self.gate.verifier.has_remote_keys:
            self.background.start("token keys", self.gate.verifier.refresh_forever())
        if self.saves_snapshots:
            saver = Saver(self.chatlog, self.follower, self.replica, self.settings.snapshot_every)
            self.background.start("snapshot saver", saver.run(self.settings.snapshot_interval))

    async def stop(self) -> None:
        """WebSockets close with 1001 first (clients resume elsewhere), then the tasks end,
        then the connection drains."""
        await self.hub.drain(self.settings.grace)
        await self.background.stop()
        await self.presence.stop()  # after the tasks: nothing is published after the bye
        await self.chatlog.close()
