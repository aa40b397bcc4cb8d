"""The log's digest: the same for every replica that applied the same entries, however they
were batched or bootstrapped, and different as soon as any entry differs."""

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.replica import Replica
from chatlog import LogEntry, digest
from chatlog.digest import Digest, digest_of


def entries(n: int) -> list[LogEntry]:
    return [
        LogEntry(
            seq=i + 1,
            subject=f"chat.c{i % 3}.{'raw' if i % 5 == 0 else 'node'}",
            data=b'{"text": ""}' if i % 7 == 0 else f'{{"text": "t{i}"}}'.encode(),
            stored_ns=1_000_000 * i,
            msg_id=f"m{i}" if i % 2 else None,
        )
        for i in range(n)
    ]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest, "BLOCK", 8)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), cuts=st.lists(st.integers(1, 9), max_size=30))
def test_a_replica_computes_the_logs_digest_whatever_the_batches(n: int, cuts: list[int]) -> None:
    log = entries(n)
    replica = Replica(8192)
    replica.reset("e", 8192)
    at = 0
    for size in [*cuts, n]:
        replica.apply(log[at : at + size])
        at += size
    assert replica.digest.hexdigest(8192) == digest_of(log).hexdigest(8192)
    assert replica.checkpoint.count == (n // 8) * 8  # a snapshot point per full block


def test_a_digest_resumed_at_a_block_boundary_is_the_same() -> None:
    log = entries(30)
    whole = digest_of(log)
    start = digest_of(log[:16])
    resumed = Digest(start.count, start.chain)
    for entry in log[16:]:
        digest.add(resumed, entry)
    assert resumed.hexdigest(8192) == whole.hexdigest(8192)
    assert whole.hexdigest(8192) != whole.hexdigest(100)  # the rule's limit is part of it


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 99},
        {"stored_ns": 1},
        {"subject": "chat.c9.node"},
        {"msg_id": "other"},
        {"data": b'{"text": "tampered"}'},
    ],
)
@pytest.mark.parametrize("position", [0, 9, 20])  # in a closed block, and in the open one
def test_any_change_to_any_entry_changes_the_digest(
    change: dict[str, object], position: int
) -> None:
    log = entries(21)
    altered = list(log)
    altered[position] = msgspec.structs.replace(log[position], **change)
    assert digest_of(altered).hexdigest(8192) != digest_of(log).hexdigest(8192)
    assert digest_of(log[:-1]).hexdigest(8192) != digest_of(log).hexdigest(
        8192
    )  # and a missing one
