"""The replication-log contract: the only package that talks to NATS.

Services create one :class:`ChatLog` each and use its verbs (ensure the stream,
publish, tail from a sequence, read a page, stream info, snapshots); the wire
types are in :mod:`chatlog.records`, stream and subject names in
:mod:`chatlog.names`, and the one retry helper in :mod:`chatlog.retry`.
"""

from chatlog.errors import (
    InvalidInput,
    LogError,
    LogFull,
    LogRejected,
    LogUnavailable,
    StreamConflict,
    TailBroken,
)
from chatlog.log import ChannelStat, ChatLog, LogInfo, PubAck
from chatlog.names import DEFAULT_CHANNEL, STREAM_NAME, check_channel, node_subject
from chatlog.records import LogEntry, Record, Skip, take
from chatlog.retry import Backoff, RetryPolicy, retry
from chatlog.settings import LogSettings
from chatlog.snapshot_store import SnapshotMeta, SnapshotRejected
from chatlog.stream import StreamSpec
from chatlog.tail import Tail

__all__ = [
    "DEFAULT_CHANNEL",
    "STREAM_NAME",
    "Backoff",
    "ChannelStat",
    "ChatLog",
    "InvalidInput",
    "LogEntry",
    "LogError",
    "LogFull",
    "LogInfo",
    "LogRejected",
    "LogSettings",
    "LogUnavailable",
    "PubAck",
    "Record",
    "RetryPolicy",
    "Skip",
    "SnapshotMeta",
    "SnapshotRejected",
    "StreamConflict",
    "StreamSpec",
    "Tail",
    "TailBroken",
    "check_channel",
    "node_subject",
    "retry",
    "take",
]
