"""``chat-cluster verify``: does every node hold exactly the log?

Each node reports, on /readyz, the seq it has applied and the log's digest there as
it computed it (:mod:`chatlog.digest`). This reads the log itself from seq 1 with
read-only credentials, computes the same digest at each node's seq, and compares.
For a node that differs, it reads the node's records channel by channel and names
the first seq at which they differ from the log's.
"""

import asyncio
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from chatlog import ChatLog, LogError, LogSettings, Record, take
from chatlog.digest import Digest, add
from chatlog.records import encode_record
from chatlog.roles import ARCHIVER

PAGE = 1000


@dataclass
class NodeState:
    name: str
    url: str
    epoch: str | None = None
    applied: int = 0
    digest: str = ""
    error: str | None = None


def _get(url: str, token: str | None = None) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=10
        ) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # /readyz answers 503 with the same fields
        return json.loads(exc.read())


def node_state(name: str, url: str) -> NodeState:
    state = NodeState(name, url)
    try:
        ready = _get(url + "/readyz")
        state.epoch, state.applied, state.digest = ready["epoch"], ready["applied"], ready["digest"]
    except (OSError, ValueError, KeyError) as exc:
        state.error = f"cannot read {url}/readyz: {exc}"
    return state


def node_records(url: str, token: str | None) -> dict[int, str]:
    """Every record a node serves, by seq (a page at a time); ``token`` must be an admin's."""
    held: dict[int, str] = {}
    for channel in _get(url + "/channels", token):
        after = 0
        while True:
            query = f"channel={channel['channel']}&after={after}&limit={PAGE}"
            page = _get(f"{url}/messages?{query}", token)
            if "messages" not in page:
                raise ValueError(f"{url}/messages: {page.get('error')}: {page.get('detail')}")
            messages = page["messages"]
            if not messages:
                break
            for message in messages:
                held[message["seq"]] = json.dumps(message, separators=(",", ":"))
            after = messages[-1]["seq"]
    return held


async def log_digests(chatlog: ChatLog, at: set[int]) -> tuple[str, dict[int, str]]:
    """The log's epoch and its digest at each seq of ``at`` (for seqs the log does not
    reach, the digest at its end)."""
    info = await chatlog.info()
    max_text = info.max_text
    digests: dict[int, str] = {}
    wanted = sorted(at)
    digest = Digest()
    after = 0
    if 0 in at:
        digests[0] = digest.hexdigest(max_text)
    while wanted and after < min(wanted[-1], info.last_seq):
        entries = await chatlog.entries(after, PAGE)
        if not entries:
            break
        for entry in entries:
            while wanted and wanted[0] < entry.seq:
                digests[wanted.pop(0)] = digest.hexdigest(max_text)
            add(digest, entry)
            after = entry.seq
            if wanted and wanted[0] == entry.seq:
                digests[wanted.pop(0)] = digest.hexdigest(max_text)
    for seq in wanted:
        digests[seq] = digest.hexdigest(max_text)
    return info.epoch, digests


async def log_records(chatlog: ChatLog, up_to: int, max_text: int) -> dict[int, str]:
    records: dict[int, str] = {}
    after = 0
    while after < up_to:
        entries = await chatlog.entries(after, PAGE)
        if not entries:
            break
        for entry in entries:
            if entry.seq > up_to:
                return records
            taken = take(entry, max_text)
            if isinstance(taken, Record):
                records[entry.seq] = encode_record(taken).decode()
            after = entry.seq
    return records


def first_difference(held: dict[int, str], truth: dict[int, str]) -> int | None:
    for seq in sorted(set(held) | set(truth)):
        if held.get(seq) is None or truth.get(seq) is None:
            return seq
        if json.loads(held[seq]) != json.loads(truth[seq]):
            return seq
    return None


async def verify(
    settings: LogSettings, nodes: list[tuple[str, str]], records: bool, token: str | None = None
) -> int:
    states = await asyncio.gather(*(asyncio.to_thread(node_state, n, u) for n, u in nodes))
    chatlog = ChatLog(settings, "chat-cluster verify", ARCHIVER)
    try:
        await chatlog.connect()
        epoch, digests = await log_digests(chatlog, {s.applied for s in states if not s.error})
        info = await chatlog.info()
        failed = 0
        for state in states:
            if state.error:
                print(f"{state.name} {state.url}: {state.error}")
                failed += 1
                continue
            if state.epoch != epoch:
                print(f"{state.name} {state.url}: epoch {state.epoch}, the log's is {epoch}")
                failed += 1
                continue
            if state.applied > info.last_seq:
                print(f"{state.name} {state.url}: applied seq {state.applied}, the log ends at "
                      f"{info.last_seq}: DIFFERS at seq {info.last_seq + 1}")  # fmt: skip
                failed += 1
                continue
            same = digests.get(state.applied) == state.digest
            if same and not records:
                print(f"{state.name} {state.url}: equal to the log at seq {state.applied}")
                continue
            # The digest covers the log's entries; the records a node serves are read and
            # compared one by one (a snapshot signed with the node key but altered, say).
            held = await asyncio.to_thread(node_records, state.url, token)
            truth = await log_records(chatlog, state.applied, info.max_text)
            seq = first_difference(held, truth)
            if same and seq is None:
                print(f"{state.name} {state.url}: equal to the log at seq {state.applied}, "
                      f"every record compared ({len(held)})")  # fmt: skip
                continue
            failed += 1
            where = f"at seq {seq}" if seq is not None else "in skipped entries"
            why = "records" if same else f"digest at seq {state.applied}"
            print(f"{state.name} {state.url}: DIFFERS {where} ({why})")
    except LogError as exc:
        print(f"chat-cluster verify: {exc}", file=sys.stderr)
        return 2
    finally:
        await chatlog.close()
    return 1 if failed else 0
