"""Who may do what in NATS: the four roles, and the exact subjects each may use.

The log's layout is this package's business, so the NATS permissions that guard it
are defined here too; ``chat-cluster up`` and the tests render them into the
nats-server configuration, and the Helm chart's copy is checked against them.

Nothing but ``admin`` may delete, purge or change a stream; nothing but ``node``
may publish a message with a user in it (``chat.<channel>.node``) or a snapshot.
Replies come back on a per-role inbox prefix, so no role can read another's
replies (the chat history a node's consumer delivers, say).
"""

from dataclasses import dataclass

from chatlog.names import SNAPSHOT_STREAM, SNAPSHOT_SUBJECTS, STREAM_NAME

NODE = "node"
ARCHIVER = "archiver"
PUBLISHER = "publisher"
ADMIN = "admin"
ROLES = (NODE, ARCHIVER, PUBLISHER, ADMIN)

_API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def inbox_prefix(role: str) -> str:
    """Where a role's clients receive replies and deliveries."""
    return "_INBOX" if role == ADMIN else f"_INBOX_{role}"


def _read(stream: str) -> tuple[str, ...]:
    return (
        f"{_API}.STREAM.INFO.{stream}",
        f"{_API}.DIRECT.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}.>",
        f"{_API}.STREAM.MSG.GET.{stream}",
    )


def permissions(role: str) -> Permissions | None:
    """The role's permissions; None means everything (admin)."""
    if role == NODE:
        return Permissions(
            publish=(
                "chat.*.node",  # a message, with the user the node stamped
                SNAPSHOT_SUBJECTS,  # a snapshot's chunks and manifest
                *_read(STREAM_NAME),
                *_read(SNAPSHOT_STREAM),
                # The replica's ordered consumer: create, delete, answer flow control.
                f"{_API}.CONSUMER.CREATE.{STREAM_NAME}",
                f"{_API}.CONSUMER.CREATE.{STREAM_NAME}.>",
                f"{_API}.CONSUMER.DELETE.{STREAM_NAME}.*",
                f"$JS.FC.{STREAM_NAME}.>",
            ),
            subscribe=(f"{inbox_prefix(NODE)}.>",),
        )
    if role == ARCHIVER:
        return Permissions(
            publish=_read(STREAM_NAME),
            subscribe=(f"{inbox_prefix(ARCHIVER)}.>",),
        )
    if role == PUBLISHER:
        # `nats pub chat.<channel> ...`: stored as chat.<channel>.raw by the stream.
        return Permissions(publish=("chat.*",), subscribe=())
    if role == ADMIN:
        return None
    raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
