"""Reads of stored messages without a consumer: batched Direct Get and the leader's msg get."""

import base64
import json
from datetime import UTC, datetime

from nats.aio.msg import Msg

from chatlog.connection import Connection, boundary
from chatlog.errors import LogRejected, LogUnavailable
from chatlog.names import STREAM_NAME
from chatlog.records import LogEntry


async def direct_batch(
    conn: Connection, stream: str, request: dict[str, object]
) -> tuple[list[LogEntry], int]:
    """The entries a (batched) Direct Get on ``stream`` answers, and Nats-Num-Pending."""
    # A batched Direct Get answers with one message per entry, then an EOB status
    # (204) carrying Nats-Num-Pending; "nothing there" is a single 404.
    async with boundary("direct get", conn):
        nc = conn.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, pending_msgs_limit=0, pending_bytes_limit=0)
        try:
            await nc.publish(
                f"{conn.api}.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
            )
            entries: list[LogEntry] = []
            while True:
                msg = await sub.next_msg(timeout=conn.api_timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "204":
                    return entries, int(headers.get("Nats-Num-Pending", "0"))
                if status == "404":
                    return entries, 0
                if status:
                    raise LogRejected(f"direct get: {status} {headers.get('Description', '')}")
                entries.append(_direct_entry(msg))
                if "batch" not in request:  # a single answer, no end-of-batch status
                    return entries, 0
        finally:
            await sub.unsubscribe()


async def leader_get(conn: Connection, request: dict[str, object]) -> LogEntry | None:
    """One entry answered by the stream leader (``$JS.API.STREAM.MSG.GET``); None if absent.

    Direct Get may be answered by any replica, and a replica that is behind returns a
    correct but shorter answer (it holds a prefix of the log). This is how a reader
    confirms that a short page really is the end."""
    async with boundary("msg get", conn):
        msg = await conn.nc.request(
            f"{conn.api}.STREAM.MSG.GET.{STREAM_NAME}",
            json.dumps(request).encode(),
            timeout=conn.api_timeout,
        )
    answer = json.loads(msg.data)
    error = answer.get("error")
    if error:
        if error.get("code") == 404:
            return None
        detail = f"msg get: {error.get('description')} (code {error.get('err_code')})"
        if error.get("code") == 503:
            # "JetStream system temporarily unavailable": e.g. right after a partition
            # heals, until a meta leader is elected again. Retryable, nothing is wrong.
            raise LogUnavailable(detail)
        raise LogRejected(detail)
    found = answer["message"]
    headers = (
        base64.b64decode(found["hdrs"]).decode("utf-8", "replace") if found.get("hdrs") else ""
    )
    msg_id = next(
        (
            line.split(":", 1)[1].strip()
            for line in headers.split("\r\n")
            if line.lower().startswith("nats-msg-id:")
        ),
        None,
    )
    return LogEntry(
        seq=int(found["seq"]),
        subject=found["subject"],
        data=base64.b64decode(found.get("data") or ""),
        stored_ns=ns_from_rfc3339(found["time"]),
        msg_id=msg_id,
    )


def _direct_entry(msg: Msg) -> LogEntry:
    headers = msg.headers or {}
    return LogEntry(
        seq=int(headers["Nats-Sequence"]),
        subject=headers["Nats-Subject"],
        data=msg.data,
        stored_ns=ns_from_rfc3339(headers["Nats-Time-Stamp"]),
        msg_id=headers.get("Nats-Msg-Id"),
    )


def ns_from_rfc3339(stamp: str) -> int:
    # JetStream writes UTC with up to nanosecond digits: 2026-11-28T04:50:01.123456789Z
    whole, _, frac = stamp.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])
