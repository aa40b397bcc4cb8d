"""A chat node's settings: every default, flag and environment variable of a node is here.

Read once at the entry point (``options.build``) and passed down.
"""

from dataclasses import dataclass

from auth import AuthSettings
from chatlog import LogSettings
from options import (
    nested,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    setting,
)
from servicekit.connections import ConnectionSettings
from servicekit.logs import log_level


def keep(raw: str) -> int | None:
    value = int(raw)
    if value == 0:
        return None
    if value < 100:
        raise ValueError("must be 0 (hold everything) or >= 100 (a join shows the last 100)")
    return value


@dataclass(frozen=True)
class NodeSettings:
    node_id: str = setting(
        "", flag="--node-id", env="NODE_ID", help="this node's name in logs, metrics and /readyz",
        shown="hostname:port",
    )  # fmt: skip
    host: str = setting("127.0.0.1", flag="--host", env="HOST", help="address to listen on")
    port: int = setting(8001, flag="--port", env="PORT", parse=port, help="port to listen on")
    log_level: str = setting(
        "INFO", flag="--log-level", env="LOG_LEVEL", parse=log_level,
        help="log level (JSON lines when stderr is not a terminal)",
    )  # fmt: skip
    log: LogSettings = nested(LogSettings)
    auth: AuthSettings = nested(AuthSettings)
    connections: ConnectionSettings = nested(ConnectionSettings)
    workers: int = setting(
        1, flag="--workers", env="WORKERS", parse=positive_int,
        help="processes serving this node's port (SO_REUSEPORT), each holding its own "
        "replica: one per core; /metrics and /readyz speak for all of them; limits hold "
        "per worker",
    )  # fmt: skip
    grace: float = setting(
        10.0, flag="--grace", env="GRACE_SECONDS", parse=positive_float,
        help="seconds SIGTERM waits for WebSockets to close with 1001",
    )  # fmt: skip
    ws_queue: int = setting(
        1024, flag="--ws-queue", env="WS_QUEUE", parse=positive_int,
        help="frames a WebSocket may have waiting before it is closed with 1013",
    )  # fmt: skip
    keep_per_channel: int | None = setting(
        None, flag="--keep-per-channel", env="KEEP_PER_CHANNEL", parse=keep,
        help="hold only the newest N (>= 100) records per channel in memory; older pages "
        "are read from the log; 0 holds everything",
        shown="0 (hold everything)",
    )  # fmt: skip
    snapshot_every: int = setting(
        100_000, flag="--snapshot-every", env="SNAPSHOT_EVERY", parse=non_negative_int,
        help="save a replica snapshot each time the log grows by N messages, so new nodes "
        "replay only the tail; 0 never saves",
    )  # fmt: skip
    diverge_after: float = setting(
        5.0, flag="--diverge-after", env="DIVERGE_AFTER", parse=positive_float,
        help="seconds a difference between this replica and the log must last before the "
        "replica is rebuilt from the log (a partitioned server may answer with an older "
        "state of the stream for a moment)",
    )  # fmt: skip
    send_rate: float = setting(
        100.0, flag="--send-rate", env="SEND_RATE", parse=non_negative_float,
        help="sends per second one user (one client address with --no-auth) may make on "
        "this node, on average; beyond it 429 rate_limited with Retry-After; 0: no limit",
    )  # fmt: skip
    send_burst: int = setting(
        500, flag="--send-burst", env="SEND_BURST", parse=positive_int,
        help="sends a user may make at once above SEND_RATE (a client reconnecting with "
        "a backlog)",
    )  # fmt: skip
    min_seq_waiters: int = setting(
        1000, flag="--min-seq-waiters", env="MIN_SEQ_WAITERS", parse=positive_int,
        help="reads that may wait for a min_seq at once; more are answered 503 busy at once "
        "(10,000 waiting reads slowed /healthz to 3.7 s and grew a node by 114 MiB)",
    )  # fmt: skip
    ws_per_user: int = setting(
        100, flag="--ws-per-user", env="WS_PER_USER", parse=non_negative_int,
        help="WebSockets one user (one client address with --no-auth) may hold open on this "
        "node; another is closed with 1008 too_many_sockets; 0: no limit",
    )  # fmt: skip
    join_rate: float = setting(
        10.0, flag="--join-rate", env="WS_JOIN_RATE", parse=non_negative_float,
        help="joins per second one WebSocket may make, on average, after a first 100 (a "
        "reconnecting client joins all its channels at once); beyond it the error frame "
        "rate_limited; 0: no limit",
    )  # fmt: skip
    history_rate: float = setting(
        20.0, flag="--history-rate", env="WS_HISTORY_RATE", parse=non_negative_float,
        help="pages of history (256 messages) one WebSocket may read from the log per second "
        "while it catches up on messages this node no longer holds (--keep-per-channel); "
        "further pages wait; 0: no limit",
    )  # fmt: skip
    ws_send_timeout: float = setting(
        10.0, flag="--ws-send-timeout", env="WS_SEND_TIMEOUT", parse=positive_float,
        help="seconds a WebSocket may take no frame while frames wait for it (a client "
        "that stopped reading); then it is closed with 1013 and resumes with after",
    )  # fmt: skip
    ready_max_lag: int = setting(
        0, flag="--ready-max-lag", env="READY_MAX_LAG", parse=non_negative_int,
        help="messages this node may be behind the log and still say ready; /readyz always "
        "reports the lag, and says lagging while there is one; 0: never unready for lag",
    )  # fmt: skip
    presence_interval: float = setting(
        5.0, flag="--presence-interval", env="PRESENCE_INTERVAL", parse=non_negative_float,
        help="seconds between this node's full presence heartbeats (who is in which channel "
        "on its sockets; changes go out within 0.1 s); a node that starts or missed a "
        "change is right again after one; 0 turns presence off",
    )  # fmt: skip
    presence_ttl: float = setting(
        15.0, flag="--presence-ttl", env="PRESENCE_TTL", parse=positive_float,
        help="seconds after which the users of a node that has sent no presence (killed, "
        "cut off) are no longer shown; at least twice PRESENCE_INTERVAL",
    )  # fmt: skip
    min_seq_wait: float = setting(
        5.0, flag="--min-seq-wait", env="MIN_SEQ_WAIT", parse=positive_float,
        help="seconds a read with min_seq waits for that seq before 503 not_caught_up",
    )  # fmt: skip

    # Tunables without a flag: tests shorten them; production has no reason to.
    heartbeat: float = 1.0
    """Idle heartbeat of the replica's consumer; three missed ones reset it."""
    stall_after: float = 2.0
    """Reset the consumer when the stream is ahead and nothing was applied for this long."""
    watchdog_interval: float = 1.0
    audit_interval: float = 10.0
    """How often one random held record, and the newest, are compared with the log's."""
    ws_max_channels: int = 100
    ws_bad_frames: int = 10
    """Consecutive bad frames before a WebSocket is closed with 1008."""
    ws_inflight_sends: int = 256
    ws_close_timeout: float = 10.0
    snapshot_interval: float = 10.0
    presence_tick: float = 0.1
    """Presence changes are batched this long: out to the other nodes, and to sockets
    watching a channel (one frame per channel per tick, however many joined)."""
