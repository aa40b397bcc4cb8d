"""A chat node's settings, read once at the entry point and passed down."""

from dataclasses import dataclass, field

from chatlog import StreamSpec


@dataclass(frozen=True)
class NodeSettings:
    node_id: str = "node-1"
    host: str = "127.0.0.1"
    port: int = 8001
    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream: StreamSpec = field(default_factory=StreamSpec)
    publish_timeout: float = 5.0
    api_timeout: float = 2.0
    """Stream info and consumer creation; short, so the watchdog recovers quickly."""
    heartbeat: float = 1.0
    """Idle heartbeat of the replica's consumer; three missed ones reset it."""
    stall_after: float = 2.0
    """Reset the consumer when the stream is ahead and nothing was applied for this long."""
    watchdog_interval: float = 1.0
    min_seq_wait: float = 5.0
    ws_queue: int = 1024
    """Frames a WebSocket may have waiting before it is closed with 1013."""
    ws_max_channels: int = 100
    ws_bad_frames: int = 10
    """Consecutive bad frames before a WebSocket is closed with 1008."""
    ws_inflight_sends: int = 256
    ws_close_timeout: float = 10.0
    keep_per_channel: int | None = None
    """Hold only the newest N records of each channel (older pages come from the log)."""
    snapshot_every: int = 100_000
    """Save a snapshot when the log has moved this many messages past the newest one (0: never).
    Only nodes that hold everything save; every node loads the newest at bootstrap."""
    snapshot_interval: float = 10.0
    grace: float = 10.0
    """Seconds a SIGTERM waits for WebSockets to close (1001) before the process exits."""
