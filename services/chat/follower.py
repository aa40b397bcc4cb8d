"""Keeps the replica equal to the log: bootstrap, live apply, watchdog, epoch changes.

Bootstrap and live delivery are one ordered consumer from applied+1 (DeliverAll
on a fresh replica), so there is no hand-over between "history" and "live"
where a message could fall through. Whatever goes wrong (NATS restart, gap,
stall, deleted stream) ends the same way: close the consumer, check the
epoch, and start a new one from applied+1.

Every second the watchdog also checks that the replica still equals the log
(:mod:`chat.integrity`); one that does not is rebuilt from the log alone.
"""

import asyncio
import logging
import time
from collections import Counter

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from chat import snapshot
from chat.integrity import Diverged, Integrity, channel_name
from chat.logstate import LogState
from chat.replica import Replica
from chat.settings import NodeSettings
from chatlog import ChatLog, LogEntry, LogError, LogInfo, StreamConflict, Tail, TailBroken
from chatlog.errors import StreamMissing
from chatlog.retry import FOLLOW, SERVICE, Backoff, retry
from telemetry import context_of

log = logging.getLogger("chat.follower")

tracer = trace.get_tracer("chat")

RECONNECT_AFTER = 3
"""Consecutive consumer resets without progress before we try another NATS server."""


class Follower:
    """The owner of the replica's state: applies the log to it, for as long as it runs."""

    def __init__(
        self, settings: NodeSettings, replica: Replica, chatlog: ChatLog, log_state: LogState
    ) -> None:
        self._settings = settings
        self._replica = replica
        self._chatlog = chatlog
        self._log_state = log_state
        self._rebuild: str | None = None
        self.integrity = Integrity(replica, chatlog, settings.diverge_after)
        self.snapshot_rejections: Counter[str] = Counter()
        """Snapshots not trusted at bootstrap, by reason (then the node replayed the log)."""
        self.alive = False
        """True while ``run`` runs: a node whose follower has ended serves a frozen replica
        and must not say it is ready."""
        self.target = 0
        """The stream's last seq when the current epoch was bootstrapped: readiness."""
        self.resets = 0
        self.stream_last_seq = 0
        """The stream's last seq as last seen (bootstrap, then the watchdog every second)."""
        self.snapshot_seq = 0
        """The seq of the snapshot the current epoch started from; 0 for a full replay."""

    @property
    def connected(self) -> bool:
        return self._chatlog.connected

    @property
    def ready(self) -> bool:
        """Connected, caught up with the stream once, and still following it."""
        return (
            self.alive
            and self._log_state.stream_ok
            and self.connected
            and self._replica.epoch is not None
            and self._replica.applied >= self.target
        )

    async def run(self) -> None:
        """The owner task: runs until cancelled."""
        self.alive = True
        try:
            await retry(self._chatlog.connect, SERVICE, "connect to NATS")
            await self._follow_for_ever()
        finally:
            self.alive = False

    async def _follow_for_ever(self) -> None:
        backoff = Backoff(FOLLOW)
        failures = 0
        while True:
            applied = self._replica.applied
            try:
                await self._bootstrap_and_follow()  # returns only by raising
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, StreamMissing | StreamConflict):
                    # A node whose log was deleted, or changed into something else, serves
                    # what it holds but is not ready, and refuses sends at once.
                    self._log_state.stream_ok = False
                if isinstance(exc, Diverged):
                    # Not a glitch: what we serve is not the log. Start over from the log.
                    log.error("replica differs from the log: %s; rebuilding it", exc.detail)
                    self._rebuild = "diverged"
                elif not isinstance(exc, LogError):
                    # Not expected, so say everything about it; then do what is always
                    # safe: start again from applied+1. A follower that died here would
                    # leave the node serving a frozen replica.
                    log.exception("unexpected error while following the log")
                self.resets += 1
                progressed = self._replica.applied > applied
                failures = 1 if progressed else failures + 1
                if progressed:
                    backoff.reset()  # a tail that worked for a while earns a quick retry
                log.warning(
                    "consumer reset (%s); resuming from seq %d",
                    exc, self._replica.applied + 1,
                    extra={"seq": self._replica.applied + 1, "reason": type(exc).__name__},
                )  # fmt: skip
                if failures >= RECONNECT_AFTER:
                    # The server we are attached to may be the one that is cut off, or still
                    # catching up after a partition (it answers, but JetStream is unavailable
                    # there). A new connection picks a server at random.
                    log.warning("%d consumer resets in a row: reconnecting", RECONNECT_AFTER)
                    await retry(self._chatlog.reconnect, SERVICE, "reconnect to NATS")
                    failures = 0
                await backoff.wait()

    async def _bootstrap_and_follow(self) -> None:
        # Every (re)start checks the stream: a stream with a new creation time is a new log
        # that replaces everything we hold, and a replica that was found to differ from
        # the log is rebuilt from the log alone (a snapshot may be what differed).
        info = await self._chatlog.check_stream()
        self._log_state.stream_ok = True
        self._observe(info)
        rebuild, self._rebuild = self._rebuild, None
        if info.epoch != self._replica.epoch or rebuild is not None:
            self.integrity.forget()
            loaded = None
            if rebuild is None:
                loaded = await snapshot.fetch(self._chatlog, info, self.snapshot_rejections)
            # Fetched before the reset: reset and restore then happen with no await between
            # them, so a WebSocket cannot join the new epoch half-way through the restore.
            self._replica.reset(info.epoch, info.max_text, rebuild or "epoch")
            self.snapshot_seq = 0
            if loaded is not None:
                snapshot.restore(self._replica, *loaded)
                self.snapshot_seq = loaded[0].seq
                del loaded  # the decoded blobs: hundreds of MB on a long log
                snapshot.give_back_memory()
            self.target = info.last_seq
            log.info(
                "bootstrapping epoch %s up to seq %d from seq %d",
                info.epoch, info.last_seq, self._replica.applied + 1,
                extra={"seq": self._replica.applied + 1, "epoch": info.epoch},
            )  # fmt: skip
        reconnects = self._chatlog.reconnects
        async with self._chatlog.tail(self._replica.applied + 1, self._settings.heartbeat) as tail:
            await self._follow(tail, reconnects)

    async def refresh(self) -> LogInfo:
        """Look at the stream now: its last seq is what the lag metrics compare with."""
        info = await self._chatlog.info()
        self._observe(info)
        return info

    def _observe(self, info: LogInfo) -> None:
        self.stream_last_seq = info.last_seq
        self._log_state.info = info

    async def _check_equal(self) -> None:
        replica = self._replica
        applied, count = replica.applied, replica.digest.count  # before asking the stream
        info = await self.refresh()
        if info.epoch != replica.epoch:
            raise TailBroken(f"stream has a new epoch {info.epoch}")
        self.integrity.check_ends(info, applied, count)
        self.integrity.check_rule(info.max_text)

    def _trace(self, entries: list[LogEntry], started: int) -> None:
        """An apply span (and a delivery span) per message that came with a traceparent,
        as a child of the sender's publish span; the batch's apply time is theirs."""
        ended = None
        for entry in entries:
            if entry.trace_parent is None:
                continue
            ended = ended or time.time_ns()
            channel = channel_name(entry.subject)
            apply = tracer.start_span(
                "chat.apply",
                context=context_of(entry.trace_parent),
                kind=SpanKind.CONSUMER,
                start_time=started,
                attributes={
                    "messaging.system": "nats",
                    "chat.node_id": self._settings.node_id,
                    "chat.seq": entry.seq,
                    "chat.channel": channel,
                },
            )
            deliver = tracer.start_span(
                "chat.deliver",
                context=trace.set_span_in_context(apply),
                start_time=started,
                attributes={
                    "chat.node_id": self._settings.node_id,
                    "chat.ws.recipients": self._replica.listener_count(channel),
                },
            )
            deliver.end(end_time=ended)
            apply.end(end_time=ended)

    async def _follow(self, tail: Tail, reconnects: int) -> None:
        settings = self._settings
        was_ready = self.ready
        now = time.monotonic()
        last_progress = now
        next_check = now + settings.watchdog_interval
        next_audit = now + settings.audit_interval
        while True:
            entries = await tail.batch(max_wait=settings.watchdog_interval / 2)
            now = time.monotonic()
            if entries:
                started = time.time_ns()
                self._replica.apply(entries)
                if was_ready:
                    # Live messages only: replaying a long log would emit two spans for
                    # every stored message that once carried a traceparent.
                    self._trace(entries, started)
                last_progress = now
                # Let WebSocket senders drain what this batch queued before the next one.
                await asyncio.sleep(0)
            if tail.position > self._replica.applied:
                # Seqs that no longer exist (deleted or purged from a log that is not
                # append-only): nothing to apply, and nothing missing.
                self._replica.advance(tail.position)
            if not was_ready and self.ready:
                was_ready = True
                log.info(
                    "caught up: seq %d of epoch %s",
                    self._replica.applied, self._replica.epoch,
                    extra={"seq": self._replica.applied, "epoch": self._replica.epoch},
                )  # fmt: skip
            if self._chatlog.reconnects != reconnects:
                # The consumer may not have survived the reconnection: start a new one.
                raise TailBroken("reconnected to NATS")
            if now >= next_audit:
                # Sooner while a record is under suspicion: confirm or clear it quickly.
                next_audit = now + (
                    settings.watchdog_interval
                    if self.integrity.suspicious
                    else settings.audit_interval
                )
                await self.integrity.audit()
            if now >= next_check:
                next_check = now + settings.watchdog_interval
                await self._check_equal()
                info = self._log_state.info
                assert info is not None
                behind = info.last_seq > self._replica.applied
                if behind and now - last_progress > settings.stall_after:
                    raise TailBroken(
                        f"stalled at seq {self._replica.applied}; stream is at {info.last_seq}"
                    )
                if not behind:
                    last_progress = now
