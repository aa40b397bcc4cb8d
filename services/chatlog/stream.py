"""The CHAT stream's configuration, and what counts as an incompatible existing stream."""

from dataclasses import dataclass
from typing import Any

from nats.js import api

from chatlog.errors import StreamConflict
from chatlog.names import STREAM_NAME, SUBJECTS
from options import int_at_least, positive_float, positive_int, setting

MAX_TEXT_KEY = "chat_cluster.max_text"
SCHEMA_KEY = "chat_cluster.schema"
SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class StreamSpec:
    """What a service wants the stream to be. ``replicas`` is used only on creation."""

    replicas: int = setting(
        1,
        flag="--stream-replicas",
        env="STREAM_REPLICAS",
        parse=int_at_least(1, 5),
        help="replicas of the CHAT stream, if this service creates it",
    )
    duplicate_window: float = setting(
        120.0,
        flag="--duplicate-window",
        env="DUPLICATE_WINDOW",
        parse=positive_float,
        help="seconds in which a repeated message id is a duplicate",
    )
    max_text: int = setting(
        8192,
        flag="--max-text",
        env="MAX_TEXT_BYTES",
        parse=positive_int,
        help="largest text in UTF-8 bytes, if this service creates the stream "
        "(then kept in the stream's metadata)",
    )

    def config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=STREAM_NAME,
            description="chat-cluster replication log",
            subjects=[SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            max_msgs=-1,
            max_bytes=-1,
            max_age=0,
            max_msgs_per_subject=-1,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=self.duplicate_window,
            allow_direct=True,
            metadata={MAX_TEXT_KEY: str(self.max_text), SCHEMA_KEY: SCHEMA_VERSION},
        )

    def check(self, have: api.StreamConfig) -> None:
        """Raise StreamConflict naming the first field an existing stream gets wrong."""
        meta = have.metadata or {}
        wanted: list[tuple[str, Any, Any]] = [
            ("subjects", have.subjects, [SUBJECTS]),
            ("storage", _value(have.storage), "file"),
            ("retention", _value(have.retention), "limits"),
            ("max_msgs", have.max_msgs, -1),
            ("max_bytes", have.max_bytes, -1),
            ("max_age", have.max_age or 0, 0),
            ("max_msgs_per_subject", have.max_msgs_per_subject, -1),
            ("allow_direct", bool(have.allow_direct), True),
            ("no_ack", bool(have.no_ack), False),
            ("sealed", bool(have.sealed), False),
            ("duplicate_window", have.duplicate_window, self.duplicate_window),
            (f"metadata[{MAX_TEXT_KEY}]", meta.get(MAX_TEXT_KEY), str(self.max_text)),
        ]
        for field, got, want in wanted:
            if got != want:
                raise StreamConflict(field, got, want)


def _value(enum_or_str: object) -> object:
    return getattr(enum_or_str, "value", enum_or_str)


def max_text_of(config: api.StreamConfig, default: int) -> int:
    """The log's own text limit: every replica skips by this one, not by its local setting."""
    raw = (config.metadata or {}).get(MAX_TEXT_KEY)
    return int(raw) if raw and raw.isdigit() else default
