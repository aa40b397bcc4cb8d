"""The replication-log contract: the only package that talks to NATS.

Services use five verbs of :class:`ChatLog` (ensure the stream, publish, tail
from a sequence, read a page, stream info) and the wire types in
:mod:`chatlog.records`; stream and subject names live in :mod:`chatlog.names`.
"""

from chatlog.connection import ChatLog, LogInfo, PubAck
from chatlog.errors import (
    InvalidInput,
    LogError,
    LogRejected,
    LogUnavailable,
    StreamConflict,
    TailBroken,
)
from chatlog.names import DEFAULT_CHANNEL, STREAM_NAME, check_channel, subject_for
from chatlog.records import LogEntry, Record, Skip, take
from chatlog.snapshots import SnapshotMeta
from chatlog.stream import StreamSpec
from chatlog.tail import Tail

__all__ = [
    "DEFAULT_CHANNEL",
    "STREAM_NAME",
    "ChatLog",
    "InvalidInput",
    "LogEntry",
    "LogError",
    "LogInfo",
    "LogRejected",
    "LogUnavailable",
    "PubAck",
    "Record",
    "Skip",
    "SnapshotMeta",
    "StreamConflict",
    "StreamSpec",
    "Tail",
    "TailBroken",
    "check_channel",
    "subject_for",
    "take",
]
