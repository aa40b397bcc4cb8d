"""The chat node's observed metrics (OpenTelemetry instruments, rendered on ``/metrics``).

Everything here is observed at scrape time from state the node keeps anyway
(applied seq, counters in the replica, follower and hub), so the apply and
delivery paths pay nothing for metrics. The send path's instruments are in
:mod:`chat.writes`. Each metric, and what to alert on, is in docs/observability.md.
"""

import time
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from chat.node import Node


class NodeMetrics:
    def __init__(self, meter: Meter, node: Node) -> None:
        self._node = node
        self._replica = node.replica
        self._follower = node.follower
        self._hub = node.hub
        gauge, counter = meter.create_observable_gauge, meter.create_observable_counter

        gauge("chat.replica.applied_seq", [self._applied_seq], "{seq}",
              "Highest stream seq applied to this node's replica")  # fmt: skip
        gauge("chat.stream.last_seq", [self._stream_last_seq], "{seq}",
              "The stream's last seq as this node last saw it (checked every second)")  # fmt: skip
        gauge("chat.replication.lag", [self._lag_messages], "{message}",
              "Messages in the stream not yet applied here")  # fmt: skip
        gauge("chat.replication.lag.duration", [self._lag_seconds], "s",
              "Behind: now minus stored_at of the newest applied message, else 0")  # fmt: skip
        gauge("chat.ready", [self._ready], "1",
              "1 when caught up and serving (the /readyz answer)")  # fmt: skip
        gauge("chat.nats.connected", [self._connected], "1",
              "1 while connected to a NATS server")  # fmt: skip
        counter("chat.messages.applied", [self._applied], "{message}",
                "Messages applied (served); skipped ones are not counted")  # fmt: skip
        counter("chat.messages.skipped", [self._skipped], "{message}",
                "Stored messages skipped by the payload rule, by reason")  # fmt: skip
        counter("chat.replica.rebuilds", [self._rebuilds], "{rebuild}",
                "Replica rebuilt from nothing, by reason: epoch (the stream was replaced), "
                "diverged (the replica held what the log does not)")  # fmt: skip
        counter("chat.snapshot.rejected", [self._snapshot_rejected], "{snapshot}",
                "Snapshots not trusted at bootstrap, by reason (the log is replayed)")  # fmt: skip
        gauge("chat.log.usage", [self._log_usage], "1",
              "Bytes stored over the log's byte limit (0 without a limit)")  # fmt: skip
        gauge("chat.log.full", [self._log_full], "1",
              "1 while sends are refused because the log is at its byte limit")  # fmt: skip
        gauge("chat.log.stalled", [self._log_stalled], "1",
              "1 while the log answers no sends although NATS is connected")  # fmt: skip
        gauge("chat.log.append_only", [self._append_only], "1",
              "1 when the stream denies deletes and purges")  # fmt: skip
        counter("chat.consumer.resets", [self._resets], "{reset}",
                "Ordered-consumer resets (gap, stall, reconnect, error)")  # fmt: skip
        counter("chat.nats.reconnects", [self._reconnects], "{reconnect}",
                "Reconnections to NATS")  # fmt: skip
        meter.create_observable_up_down_counter(
            "chat.ws.connections", [self._connections], "{connection}", "Open WebSockets"
        )
        counter("chat.ws.joins", [self._joins], "{join}", "Channel joins")
        counter("chat.ws.delivered", [self._delivered], "{message}",
                "Message frames written to WebSockets (live and catch-up)")  # fmt: skip
        counter("chat.ws.writes", [self._writes], "{write}",
                "Writes (system calls) to WebSockets by path: direct (messages' frames, built "
                "once, written by the push itself, those of one turn of the loop together), "
                "batched (what waited in a socket's queue, in one call), awaited (the ASGI "
                "send, for a paused or closing socket)")  # fmt: skip
        counter("chat.ws.closed", [self._closed], "{connection}",
                "WebSockets closed by the node, by reason (overflow = 1013, abuse = 1008, "
                "going_away = 1001, log_replaced = 1012, unauthorized = 4001, "
                "token_expired = 4002)")  # fmt: skip
        counter("chat.limits.refused", [self._refused], "{request}",
                "Requests refused by a limit, by reason: send_rate (429), min_seq_waiters "
                "(503 busy), connections and connections_per_address (503), header_timeout "
                "(408), read_timeout (closed), headers_too_large (431), pipelined (400), "
                "write_timeout and ws_control_frames (dropped), ws_per_user (1008), join_rate "
                "(error frame); history_rate counts log pages delayed"
                "(503 busy)")  # fmt: skip
        gauge("chat.reads.waiting", [self._waiting], "{read}",
              "Reads waiting for a min_seq now (at most MIN_SEQ_WAITERS)")  # fmt: skip
        counter("chat.auth.tokens", [self._tokens], "{token}",
                "Tokens presented, by outcome: verified (signature checked), cached (seen "
                "before, still valid), refused (401)")  # fmt: skip
        gauge("chat.auth.grants", [self._grants], "{grant}",
              "Grants held (user and channel pairs from the grants bucket)")  # fmt: skip
        gauge("chat.presence.entries", [self._presence_entries], "{entry}",
              "Presence entries held: (node, channel, user) with sockets, this node's and "
              "every other node's")  # fmt: skip
        gauge("chat.presence.online", [self._presence_online], "{user}",
              "(channel, user) pairs present on some node: the sum served")  # fmt: skip
        gauge("chat.presence.peers", [self._presence_peers], "{node}",
              "Other nodes whose presence this node holds (heard within PRESENCE_TTL)")  # fmt: skip
        counter("chat.presence.messages", [self._presence_messages], "{message}",
                "Presence messages on NATS, by direction: out (published), in (from "
                "other nodes), invalid (not understood), failed (not published)")  # fmt: skip
        counter("chat.presence.repairs", [self._presence_repairs], "{event}",
                "Presence mended by a heartbeat or a TTL, by reason: gap (a message from "
                "a node was lost), expired (a node went silent for PRESENCE_TTL)")  # fmt: skip

    def _writes(self, _: CallbackOptions) -> Iterable[Observation]:
        for path, count in self._hub.stats.writes.items():
            yield Observation(count, {"path": path})

    def _presence_entries(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._node.presence.entries)

    def _presence_online(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._node.presence.pairs)

    def _presence_peers(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._node.presence.peers)

    def _presence_messages(self, _: CallbackOptions) -> Iterable[Observation]:
        stats = self._node.presence.stats
        yield Observation(stats.sent, {"direction": "out"})
        yield Observation(stats.received, {"direction": "in"})
        yield Observation(stats.invalid, {"direction": "invalid"})
        yield Observation(stats.send_failed, {"direction": "failed"})

    def _presence_repairs(self, _: CallbackOptions) -> Iterable[Observation]:
        stats = self._node.presence.stats
        yield Observation(stats.gaps, {"reason": "gap"})
        yield Observation(stats.expired, {"reason": "expired"})

    def _applied_seq(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._replica.applied)

    def _stream_last_seq(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(max(self._follower.stream_last_seq, self._replica.applied))

    def _lag_messages(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._node.lag)

    def _lag_seconds(self, _: CallbackOptions) -> Iterable[Observation]:
        replica = self._replica
        behind = self._follower.stream_last_seq > replica.applied or replica.epoch is None
        if not behind:
            yield Observation(0.0)
        elif replica.last_stored_ns:
            yield Observation(max(0.0, time.time() - replica.last_stored_ns / 1e9))
        # else: behind with nothing applied yet; no honest number, so no point

    def _ready(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(int(self._node.ready))

    def _connected(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(int(self._follower.connected))

    def _applied(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._replica.applied_total)

    def _skipped(self, _: CallbackOptions) -> Iterable[Observation]:
        for reason, count in self._replica.skipped.items():
            yield Observation(count, {"reason": reason})

    def _rebuilds(self, _: CallbackOptions) -> Iterable[Observation]:
        for reason, count in self._replica.rebuilds.items():
            yield Observation(count, {"reason": reason})

    def _snapshot_rejected(self, _: CallbackOptions) -> Iterable[Observation]:
        for reason, count in self._follower.snapshot_rejections.items():
            yield Observation(count, {"reason": reason})

    def _log_usage(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._node.log_state.usage)

    def _log_full(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(int(self._node.log_state.full))

    def _log_stalled(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(int(self._node.log_state.stalled))

    def _append_only(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(int(self._node.log_state.append_only))

    def _resets(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._follower.resets)

    def _reconnects(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._node.chatlog.reconnects)

    def _connections(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._hub.sessions))

    def _joins(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._hub.stats.joins)

    def _delivered(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._hub.stats.delivered)

    def _closed(self, _: CallbackOptions) -> Iterable[Observation]:
        for reason, count in self._hub.stats.closed.items():
            yield Observation(count, {"reason": reason})

    def _tokens(self, _: CallbackOptions) -> Iterable[Observation]:
        verifier = self._node.gate.verifier
        if verifier is not None:
            yield Observation(verifier.verified, {"outcome": "verified"})
            yield Observation(verifier.cache_hits, {"outcome": "cached"})
            yield Observation(verifier.refused, {"outcome": "refused"})

    def _grants(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._node.gate.grants.count)

    def _waiting(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._replica.waiting)

    def _refused(self, _: CallbackOptions) -> Iterable[Observation]:
        for reason, count in self._node.refused.items():
            yield Observation(count, {"reason": reason})
