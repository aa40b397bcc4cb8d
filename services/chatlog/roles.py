"""Who may do what in NATS: the four roles, the accounts they live in, and the exact
subjects each may use.

The log's layout is this package's business, so the NATS permissions that guard it
are defined here too; ``chat-cluster up`` and the tests render them into the
nats-server configuration, and the Helm chart's copy is checked against them.

Two lines of defence:

- **Accounts.** The streams live in the account ``CHAT``, where only ``node`` and
  ``admin`` connect. ``publisher`` and ``archiver`` live in accounts of their own
  (``PUBLISH``, ``READ``) that import exactly the subjects they need from ``CHAT``
  as services. NATS lets a client choose the reply subject of what it sends, and
  inside an account JetStream both stores and *executes* whatever reaches its
  subjects, answers included: a read answered onto ``$JS.API.STREAM.DELETE.CHAT``
  deletes the stream. Through a service import every answer is routed back into
  the asker's own account, where it can do nothing.
- **Permissions** within each account: nothing but ``admin`` may call the
  JetStream API that deletes, purges or changes a stream; nothing but ``node`` may
  publish a message with a user in it (``chat.<channel>.node``), a snapshot, or
  presence.
  Replies come back on a per-role inbox prefix, so no role can read another's.

``node`` shares its account with the streams, so its answers can reach the
JetStream API too: node credentials are trusted with the log (docs/security.md).
"""

from dataclasses import dataclass

from chatlog.names import (
    POLICY_STREAM,
    POLICY_SUBJECTS,
    PRESENCE_SUBJECTS,
    SNAPSHOT_STREAM,
    SNAPSHOT_SUBJECTS,
    STREAM_NAME,
)

NODE = "node"
ARCHIVER = "archiver"
PUBLISHER = "publisher"
ADMIN = "admin"
ROLES = (NODE, ARCHIVER, PUBLISHER, ADMIN)

LOG_ACCOUNT = "CHAT"
"""Where the streams live."""
ACCOUNTS = {NODE: LOG_ACCOUNT, ADMIN: LOG_ACCOUNT, PUBLISHER: "PUBLISH", ARCHIVER: "READ"}

_API = "$JS.API"
READ_API = "CHATLOG.API"
"""The archiver's name for the log's JetStream API (imported from ``CHAT``): its own
account's ``$JS.API`` answers only "JetStream not enabled"."""


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True)
class Import:
    """A service the role's account imports from ``CHAT``: ``subject`` there, ``to`` here."""

    subject: str
    to: str
    stream_response: bool = False
    """The answer is several messages (a batched Direct Get)."""


def inbox_prefix(role: str) -> str:
    """Where a role's clients receive replies and deliveries."""
    return "_INBOX" if role == ADMIN else f"_INBOX_{role}"


def api_prefix(role: str) -> str:
    """The JetStream API prefix the role's clients use."""
    return READ_API if role == ARCHIVER else _API


def _read(stream: str, api: str = _API) -> tuple[str, ...]:
    return (
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.STREAM.MSG.GET.{stream}",
    )


def imports(role: str) -> tuple[Import, ...]:
    """What the role's account imports from ``CHAT`` (none for roles that live there)."""
    if role == ARCHIVER:
        return tuple(
            Import(subject, subject.replace(_API, READ_API, 1), ".DIRECT.GET." in subject)
            # The log, and the grants (checked on every page and export).
            for subject in (*_read(STREAM_NAME), *_read(POLICY_STREAM))
        )
    if role == PUBLISHER:
        # `nats pub chat.<channel> ...`: stored as chat.<channel>.raw by the stream.
        return (Import("chat.*", "chat.*"),)
    return ()


def permissions(role: str) -> Permissions | None:
    """The role's permissions in its own account; None means everything (admin)."""
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
                # Grants: the admin route writes them; every node watches them (an
                # ordered consumer, whose pending count is read once at start).
                POLICY_SUBJECTS,
                *_read(POLICY_STREAM),
                f"{_API}.CONSUMER.CREATE.{POLICY_STREAM}",
                f"{_API}.CONSUMER.CREATE.{POLICY_STREAM}.>",
                f"{_API}.CONSUMER.DELETE.{POLICY_STREAM}.*",
                f"{_API}.CONSUMER.INFO.{POLICY_STREAM}.*",
                f"$JS.FC.{POLICY_STREAM}.>",
                # Presence, on core NATS between the nodes (chatlog.bus): no other role may
                # publish or read it, so no one else can forge who is online.
                PRESENCE_SUBJECTS,
            ),
            subscribe=(f"{inbox_prefix(NODE)}.>", PRESENCE_SUBJECTS),
        )
    if role == ARCHIVER:
        return Permissions(
            publish=tuple(i.to for i in imports(ARCHIVER)),
            subscribe=(f"{inbox_prefix(ARCHIVER)}.>",),
        )
    if role == PUBLISHER:
        return Permissions(publish=tuple(i.to for i in imports(PUBLISHER)), subscribe=())
    if role == ADMIN:
        return None
    raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
