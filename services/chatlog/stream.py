"""The streams' configuration (the log ``CHAT`` and the snapshots ``CHAT_SNAPSHOTS``), and
what counts as an existing stream we must not use.

Only ``ensure-stream`` (the admin) creates the streams, from a ``StreamSpec``. Every
service checks what it finds. Four kinds of field:

- **What the log means** (subjects and the raw-publish transform, storage,
  retention, no age or count limits, discard policy, direct reads, schema): a
  stream that differs is refused by everyone, with the field named.
- **Its parameters** (duplicate window, text limit): ``ensure-stream`` refuses a
  stream with other values than it was given; services take them from the stream
  (the text limit is in its metadata, so every replica applies the same rule).
- **Append-only** (``deny_delete``, ``deny_purge``): NATS cannot turn them off
  once set. ``ensure-stream`` (the admin) refuses a stream without them; a
  service follows it anyway, says so at every start and in ``/readyz``
  (``append_only: false``), and detects any deletion (``chat.follower``).
- **Limits** (``max_bytes``): ``ensure-stream`` raises them when asked to; services
  do not care. ``discard: new`` makes a full log refuse new messages instead of
  dropping old ones.
"""

import logging
from dataclasses import dataclass
from typing import Any

from nats.js import api

from chatlog.errors import StreamConflict
from chatlog.names import (
    RAW_DEST,
    RAW_SOURCE,
    SNAPSHOT_STREAM,
    SNAPSHOT_SUBJECTS,
    STREAM_NAME,
    SUBJECTS,
)
from options import byte_size, int_at_least, positive_float, positive_int, setting

log = logging.getLogger("chatlog.stream")

MAX_TEXT_KEY = "chat_cluster.max_text"
SCHEMA_KEY = "chat_cluster.schema"
SCHEMA_VERSION = "2"
"""2: node and raw subjects (chat.C.node, chat.C.raw), append-only, a byte limit."""
DEFAULT_MAX_TEXT = 8192
MAX_PAYLOAD = 1024 * 1024
"""nats-server's max_payload as our configurations set it: no message is larger."""

LOG_SHARE = 0.80
SNAPSHOT_SHARE = 0.15
"""Of the NATS account's JetStream file storage (per copy), when no size is given: the
rest is headroom (consumer state, the server's own files)."""


@dataclass(frozen=True)
class StreamSpec:
    """What a service wants the streams to be. Only ``ensure-stream`` creates them."""

    replicas: int = setting(
        1,
        flag="--stream-replicas",
        env="STREAM_REPLICAS",
        parse=int_at_least(1, 5),
        help="replicas of the CHAT stream, when ensure-stream creates it",
    )
    duplicate_window: float = setting(
        120.0,
        flag="--duplicate-window",
        env="DUPLICATE_WINDOW",
        parse=positive_float,
        help="seconds in which a repeated message id is a duplicate",
    )
    max_text: int = setting(
        DEFAULT_MAX_TEXT,
        flag="--max-text",
        env="MAX_TEXT_BYTES",
        parse=positive_int,
        help="largest text in UTF-8 bytes, when ensure-stream creates the stream "
        "(then kept in the stream's metadata)",
    )
    max_bytes: int = setting(
        0,
        flag="--log-max-bytes",
        env="LOG_MAX_BYTES",
        parse=byte_size,
        help="the log's byte limit (ensure-stream sets it, and raises an existing one to it); "
        "a full log refuses sends with 507 log_full",
        shown="80% of the NATS account's JetStream storage / replicas",
    )
    snapshot_max_bytes: int = setting(
        0,
        flag="--snapshot-max-bytes",
        env="SNAPSHOT_MAX_BYTES",
        parse=byte_size,
        help="the snapshot stream's byte limit (it keeps the newest snapshots that fit; "
        "give it room for two)",
        shown="15% of the NATS account's JetStream storage / replicas",
    )

    def sizes(self, account_storage: int) -> tuple[int, int]:
        """The byte limits of the log and of the snapshots, given the account's storage
        limit (-1 or 0 when it has none). JetStream counts every replica against the
        account (an R3 stream of N bytes takes 3N), so the shares are divided by the
        replicas. Raises ValueError when neither a limit nor a size is known."""
        log_bytes, snapshot_bytes = self.max_bytes, self.snapshot_max_bytes
        if account_storage > 0:
            per_copy = account_storage / self.replicas
            log_bytes = log_bytes or int(per_copy * LOG_SHARE)
            snapshot_bytes = snapshot_bytes or int(per_copy * SNAPSHOT_SHARE)
        if not log_bytes or not snapshot_bytes:
            raise ValueError(
                "the NATS account has no JetStream storage limit to take a share of: give "
                "LOG_MAX_BYTES and SNAPSHOT_MAX_BYTES (or set the account's max_file)"
            )
        return log_bytes, snapshot_bytes

    def config(self, max_bytes: int) -> api.StreamConfig:
        return api.StreamConfig(
            name=STREAM_NAME,
            description="chat-cluster replication log",
            subjects=[SUBJECTS],
            subject_transform=api.SubjectTransform(src=RAW_SOURCE, dest=RAW_DEST),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            max_msgs=-1,
            max_bytes=max_bytes,
            max_age=0,
            max_msgs_per_subject=-1,
            # The largest payload a node sends (every character JSON-escaped, and the
            # other fields), so no single message can take a large bite of the log.
            max_msg_size=min(8 * self.max_text + 4096, MAX_PAYLOAD),
            discard=api.DiscardPolicy.NEW,
            duplicate_window=self.duplicate_window,
            allow_direct=True,
            deny_delete=True,
            deny_purge=True,
            metadata={MAX_TEXT_KEY: str(self.max_text), SCHEMA_KEY: SCHEMA_VERSION},
        )

    def snapshot_config(self, max_bytes: int) -> api.StreamConfig:
        # Each snapshot's chunks are on subjects of their own and the manifest on one
        # subject that keeps its newest message; discard old evicts the oldest snapshots
        # when a new one needs the room. Nobody deletes: only the limits do.
        return api.StreamConfig(
            name=SNAPSHOT_STREAM,
            description="chat-cluster replica snapshots",
            subjects=[SNAPSHOT_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            max_msgs=-1,
            max_bytes=max_bytes,
            max_age=0,
            max_msgs_per_subject=1,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=1.0,
            allow_direct=True,
            deny_delete=True,
            deny_purge=True,
        )

    def check(self, have: api.StreamConfig) -> None:
        """What ``ensure-stream`` refuses: anything ``check_log`` refuses strictly, and
        other parameters than the ones it was given."""
        check_log(have, strict=True)
        max_text = (have.metadata or {}).get(MAX_TEXT_KEY)
        _require(
            STREAM_NAME,
            [
                ("duplicate_window", have.duplicate_window, self.duplicate_window),
                (f"metadata[{MAX_TEXT_KEY}]", max_text, str(self.max_text)),
            ],
        )


def check_log(have: api.StreamConfig, strict: bool) -> list[str]:
    """Raise StreamConflict naming the first field that changes what the log means
    (and, when ``strict``, that it is not append-only). Returns what a non-strict
    check let pass, for the caller to say."""
    meta = have.metadata or {}
    transform = have.subject_transform
    wanted: list[tuple[str, Any, Any]] = [
        ("subjects", have.subjects, [SUBJECTS]),
        (
            "subject_transform",
            (transform.src, transform.dest) if transform else None,
            (RAW_SOURCE, RAW_DEST),
        ),
        ("storage", _value(have.storage), "file"),
        ("retention", _value(have.retention), "limits"),
        ("max_msgs", have.max_msgs, -1),
        ("max_age", have.max_age or 0, 0),
        ("max_msgs_per_subject", have.max_msgs_per_subject, -1),
        ("discard", _value(have.discard), "new"),
        ("allow_direct", bool(have.allow_direct), True),
        ("no_ack", bool(have.no_ack), False),
        ("sealed", bool(have.sealed), False),
        (f"metadata[{SCHEMA_KEY}]", meta.get(SCHEMA_KEY), SCHEMA_VERSION),
    ]
    _require(STREAM_NAME, wanted)
    return _append_only(STREAM_NAME, have, strict)


def check_snapshots(have: api.StreamConfig, strict: bool) -> list[str]:
    wanted: list[tuple[str, Any, Any]] = [
        ("subjects", have.subjects, [SNAPSHOT_SUBJECTS]),
        ("storage", _value(have.storage), "file"),
        ("max_msgs_per_subject", have.max_msgs_per_subject, 1),
        ("allow_direct", bool(have.allow_direct), True),
    ]
    _require(SNAPSHOT_STREAM, wanted)
    return _append_only(SNAPSHOT_STREAM, have, strict)


def _require(stream: str, wanted: list[tuple[str, Any, Any]]) -> None:
    for field, got, want in wanted:
        if got != want:
            raise StreamConflict(field, got, want, stream)


def _append_only(stream: str, have: api.StreamConfig, strict: bool) -> list[str]:
    lenient = []
    for field, got in (("deny_delete", have.deny_delete), ("deny_purge", have.deny_purge)):
        if not got:
            if strict:
                raise StreamConflict(field, bool(got), True, stream)
            lenient.append(f"stream {stream} has {field}=false: it is not append-only")
    if have.max_bytes is None or have.max_bytes < 0:
        lenient.append(f"stream {stream} has no byte limit: a full disk stops NATS itself")
    return lenient


def _value(enum_or_str: object) -> object:
    return getattr(enum_or_str, "value", enum_or_str)


def max_text_of(config: api.StreamConfig) -> int:
    """The log's own text limit: every replica skips by this one, not by a local setting."""
    raw = (config.metadata or {}).get(MAX_TEXT_KEY)
    return int(raw) if raw and raw.isdigit() else DEFAULT_MAX_TEXT
