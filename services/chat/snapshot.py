"""Snapshots of a replica: the codec, and the loader a new node uses (the saver is in
:mod:`chat.saver`).

A snapshot is the replica's whole state after applying every seq up to ``seq``
of one epoch, taken at a digest block boundary (``Replica.checkpoint``) so it
carries the log's digest there too. Loading it and tailing from seq+1 must give
exactly the state a full replay gives; that holds because apply is deterministic
(the same ``take`` rule, the stream's own ``max_text``) and the stream never
deletes messages (append-only). Anything doubtful (not signed by a node, another
epoch, another format, a seq beyond the stream, an unreadable body) means
"replay from the log".
"""

import asyncio
import ctypes
import ctypes.util
import logging
import sys
import time
from array import array
from bisect import bisect_right
from collections import Counter

import msgspec

from chat.replica import ChannelLog, Checkpoint, Replica
from chatlog import ChatLog, LogError, LogInfo, SnapshotMeta, SnapshotRejected
from chatlog.digest import Digest

log = logging.getLogger("chat.snapshot")

FORMAT = 3
"""Bump when the state's shape or the meaning of a record changes. 3: schema-2 logs
(node and raw subjects), the digest state in the signed manifest."""


class ChannelState(msgspec.Struct, array_like=True, gc=False):
    name: str
    seqs: bytes
    """int64 little-endian, ascending."""
    stored_us: bytes
    """int64 little-endian, one per seq."""
    fields: bytes
    """Each record's compact fields joined by RS (0x1e), which JSON output never contains
    raw: one split on load instead of a million decodes."""
    dropped_through: int
    total: int


class ReplicaState(msgspec.Struct, array_like=True):
    epoch: str
    applied: int
    max_text: int
    applied_total: int
    skipped: dict[str, int]
    channels: list[ChannelState]


_RS = b"\x1e"
_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name) if _libc_name else None


def give_back_memory() -> None:
    """Return freed heap memory to the OS (glibc only; elsewhere a no-op).

    Loading or saving a snapshot allocates and frees hundreds of MB in large blocks
    (chunks, the inflated body, the decoded blobs). glibc keeps such freed memory in
    the process; measured on 1,000,000 records, RSS stayed ~260 MB above the live data
    after a load (~330 MB for a bounded node that keeps almost none of it) until this.
    """
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ReplicaState)


def _le(seqs: "array[int]") -> "array[int]":
    if sys.byteorder != "little":
        seqs = array("q", seqs)
        seqs.byteswap()
    return seqs


def _int64s(raw: bytes) -> "array[int]":
    values = array("q")
    values.frombytes(raw)
    return _le(values)


CHUNK = 50_000
"""Records joined between two yields to the event loop while a live node captures."""


async def capture_live(
    replica: Replica, at: Checkpoint | None = None
) -> tuple[SnapshotMeta, bytes] | None:
    """The replica's state at its newest checkpoint S (a digest block boundary, at most
    a block behind what is applied), built a channel (and at most CHUNK records) at a
    time, so the node keeps delivering meanwhile.

    Appends after S are left out by seq. That gives exactly the state at S because a
    node that saves holds everything (nothing is trimmed) and a channel's records only
    ever grow at the end. None if the epoch changed meanwhile, or no block is closed.
    ``at`` takes the state at another point (``Replica.position()``: the whole replica,
    for comparing two of them)."""
    assert replica.keep is None and replica.epoch is not None
    checkpoint = at or replica.checkpoint
    if checkpoint.count == 0:
        return None
    epoch, seq = replica.epoch, checkpoint.seq
    applied_total, skipped = checkpoint.applied_total, checkpoint.skipped
    states = []
    # The channels as they are at S: one created later holds only seqs after S.
    for name, channel in list(replica.channels.items()):
        n = bisect_right(channel.seqs, seq)
        parts = []
        for start in range(0, n, CHUNK):
            parts.append(_RS.join(channel.fields[start : min(n, start + CHUNK)]))
            await asyncio.sleep(0)
            if replica.epoch != epoch:
                return None
        # Read together, with no await between: total and length move in step.
        total_at_seq = channel.total - (len(channel.seqs) - n)
        states.append(
            ChannelState(
                name=name,
                seqs=_le(channel.seqs[:n]).tobytes(),
                stored_us=_le(channel.stored_us[:n]).tobytes(),
                fields=_RS.join(parts),
                dropped_through=channel.dropped_through,
                total=total_at_seq,
            )
        )
    state = ReplicaState(
        epoch=epoch,
        applied=seq,
        max_text=replica.max_text,
        applied_total=applied_total,
        skipped=skipped,
        channels=states,
    )
    meta = SnapshotMeta(
        epoch=epoch,
        seq=seq,
        format=FORMAT,
        count=checkpoint.count,
        chain=checkpoint.chain.hex(),
    )
    return meta, _encoder.encode(state)


def decode(meta: SnapshotMeta, body: bytes, info: LogInfo) -> ReplicaState | None:
    """The state in ``body`` if it is usable for the stream ``info`` describes."""
    try:
        state = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        log.warning("ignoring an unreadable snapshot: %s", exc)
        return None
    if (state.epoch, state.applied) != (meta.epoch, meta.seq) or state.max_text != info.max_text:
        log.warning(
            "ignoring a snapshot of %s@%d (max_text %d) for stream %s (max_text %d)",
            state.epoch, state.applied, state.max_text, info.epoch, info.max_text,
        )  # fmt: skip
        return None
    return state


def restore(replica: Replica, meta: SnapshotMeta, state: ReplicaState) -> None:
    """Load ``state`` into a replica that was just reset for the same epoch."""
    assert replica.epoch == state.epoch and replica.applied == 0
    replica.applied = state.applied
    replica.applied_total = state.applied_total
    replica.skipped.update(state.skipped)
    replica.digest = Digest(meta.count, bytes.fromhex(meta.chain))
    replica.checkpoint = Checkpoint(
        state.applied, meta.count, replica.digest.chain, state.applied_total, dict(state.skipped)
    )
    for channel_state in state.channels:
        channel = ChannelLog(channel_state.name)
        seqs = _int64s(channel_state.seqs)
        stored_us = _int64s(channel_state.stored_us)
        blob = channel_state.fields
        channel.dropped_through = channel_state.dropped_through
        keep = replica.keep
        if keep is not None and len(seqs) > keep:
            # Split off only what is kept: a million small objects created and freed
            # again would leave the process's heap that much bigger for good.
            channel.dropped_through = seqs[-keep - 1]
            seqs, stored_us = seqs[-keep:], stored_us[-keep:]
            channel.fields = blob.rsplit(_RS, keep)[1:]
        else:
            channel.fields = blob.split(_RS) if blob else []
        channel.seqs, channel.stored_us = seqs, stored_us
        channel.total = channel_state.total
        replica.channels[channel_state.name] = channel
        if stored_us:
            replica.last_stored_ns = max(replica.last_stored_ns, stored_us[-1] * 1000)
        if seqs and (replica.newest is None or seqs[-1] > replica.newest[0]):
            replica.newest = (seqs[-1], channel_state.name)


def usable(meta: SnapshotMeta | None, info: LogInfo) -> bool:
    return (
        meta is not None
        and meta.format == FORMAT
        and meta.epoch == info.epoch
        and 0 < meta.seq <= info.last_seq
    )


async def fetch(
    chatlog: ChatLog, info: LogInfo, rejected: Counter[str]
) -> tuple[SnapshotMeta, ReplicaState] | None:
    """The newest usable snapshot for this stream, or None (then replay everything). One
    that must not be trusted (not signed by a node, altered, cut short) is counted in
    ``rejected`` and logged: then, too, the node replays the log."""
    started = time.monotonic()
    try:
        if not usable(await chatlog.snapshot_meta(), info):
            return None
        loaded = await chatlog.load_snapshot()
    except SnapshotRejected as exc:
        rejected[exc.code] += 1
        log.error("snapshot rejected (%s); replaying the whole log", exc.detail)
        return None
    except LogError as exc:
        log.warning("no snapshot used (%s); replaying the whole log", exc)
        return None
    except Exception:
        # An optimisation must never stop a node from bootstrapping: replay instead.
        log.exception("no snapshot used: unexpected error; replaying the whole log")
        return None
    if loaded is None or not usable(loaded[0], info):
        return None  # replaced between the two reads by one we cannot use
    meta, body = loaded
    state = decode(meta, body, info)
    if state is None:
        rejected["inconsistent"] += 1
        return None
    log.info(
        "loaded snapshot of seq %d (%d bytes) in %.2fs",
        meta.seq, len(body), time.monotonic() - started,
    )  # fmt: skip
    return meta, state
