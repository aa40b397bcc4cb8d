"""Core NATS beside the log: messages between the nodes that are never stored.

Presence uses it (who is in which channel now). What goes here is ephemeral by
design: a message published while no node listens is gone, and that is right for
presence, whose every node repeats its whole state each interval. A replay of the
log must never bring back people who left long ago, so none of it goes to the log.

The bus has its own connection. A log reconnection (the follower's resets) swaps
the log's connection and would take a subscription with it; nats-py restores this
one's subscription by itself after a reconnect, and presence traffic never queues
in front of a send waiting for its PubAck.
"""

import logging
from collections.abc import Callable

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from chatlog.connection import NATS_DOWN, Connection
from chatlog.errors import LogUnavailable
from chatlog.names import PRESENCE_SUBJECT
from chatlog.settings import LogSettings

log = logging.getLogger("chatlog.bus")

PENDING_MESSAGES = 10_000
"""Received messages a slow node may hold before nats-py drops more (and says so): a
node far behind on presence loses messages, and the next heartbeats repair it."""


class Bus:
    """Presence messages in and out, as the ``node`` role (the only role NATS lets
    publish or subscribe on the presence subjects)."""

    def __init__(self, settings: LogSettings, name: str, role: str) -> None:
        self._settings = settings
        self._name = name
        self._role = role
        self._conn: Connection | None = None
        self._sub: Subscription | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.connected

    async def connect(self, on_message: Callable[[bytes], None]) -> None:
        """Connect and subscribe (LogUnavailable if NATS does not answer); ``on_message``
        is called on the event loop with each payload, our own included."""
        if self._conn is not None:
            return
        conn = await Connection.open(self._settings, self._name, self._role)

        async def deliver(msg: Msg) -> None:
            on_message(msg.data)

        try:
            self._sub = await conn.nc.subscribe(
                PRESENCE_SUBJECT,
                cb=deliver,
                pending_msgs_limit=PENDING_MESSAGES,
                pending_bytes_limit=64 * 1024 * 1024,
            )
            # The server has the subscription once a round trip is done: only then is a
            # heartbeat we publish certain to reach everyone already listening.
            await conn.nc.flush(timeout=max(1, round(self._settings.api_timeout)))
        except (*NATS_DOWN, nats.errors.Error) as exc:
            await conn.close()
            raise LogUnavailable(f"subscribe to presence: {exc!r}") from exc
        self._conn = conn

    async def publish(self, payload: bytes) -> None:
        """Fire and forget (core NATS: no ack). While NATS is away nats-py buffers what it
        can; beyond that the message is dropped, and the next heartbeat repairs it."""
        conn = self._conn
        if conn is None:
            raise LogUnavailable("presence bus not connected")
        try:
            await conn.nc.publish(PRESENCE_SUBJECT, payload)
        except (*NATS_DOWN, nats.errors.Error) as exc:
            raise LogUnavailable(f"presence publish: {exc!r}") from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.nc.flush(timeout=1)
            except (*NATS_DOWN, nats.errors.Error) as exc:
                log.info("presence bus closed without a last flush: %r", exc)
            await conn.close()
