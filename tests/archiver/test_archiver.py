"""The archiver over real sockets: pages, channels, NDJSON export, poison, bad input."""

import asyncio
import json
import urllib.request

import pytest

from chatlog import ChatLog
from tests.support import NodeProcs, all_messages, bearer, get_json, http, said, until


@pytest.fixture
def archiver_url(procs: NodeProcs) -> str:
    return procs.archiver().url


def read_export(url: str) -> tuple[str, bytes]:
    request = urllib.request.Request(url, headers=bearer())
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.headers["content-type"], resp.read()


async def fill(chatlog: ChatLog) -> list[int]:
    seqs = []
    for i in range(25):
        ack = await chatlog.publish("hist" if i % 5 else "other", b'{"text":"m%d"}' % i, f"a{i}")
        seqs.append(ack.seq)
    return seqs


async def test_pages_walk_a_channel_from_its_start(chatlog: ChatLog, archiver_url: str) -> None:
    seqs = await fill(chatlog)
    hist = [s for i, s in enumerate(seqs) if i % 5]
    page = get_json(f"{archiver_url}/messages/hist?limit=7")
    assert [m["seq"] for m in page["messages"]] == hist[:7]
    assert page["channel"] == "hist" and page["last_seq"] == 25 and page["epoch"]
    walked = all_messages(f"{archiver_url}/messages/hist", "hist")
    assert [m["seq"] for m in walked] == hist
    assert walked[0]["text"] == "m1" and walked[0]["user"] == "anonymous"


async def test_channels_and_export(chatlog: ChatLog, archiver_url: str) -> None:
    await fill(chatlog)
    assert get_json(f"{archiver_url}/channels") == [
        {"channel": "hist", "count": 20, "last_seq": 25},
        {"channel": "other", "count": 5, "last_seq": 21},
    ]
    content_type, body = await asyncio.to_thread(read_export, f"{archiver_url}/export/hist")
    assert content_type.startswith("application/x-ndjson")
    lines = [json.loads(line) for line in body.splitlines()]
    assert [r["seq"] for r in lines] == [
        r["seq"] for r in all_messages(f"{archiver_url}/messages/hist", "hist")
    ]


async def test_export_of_an_empty_channel_is_empty(chatlog: ChatLog, archiver_url: str) -> None:
    _, body = await asyncio.to_thread(read_export, f"{archiver_url}/export/nothing")
    assert body == b""


async def test_poison_is_passed_over_like_on_the_nodes(
    chatlog: ChatLog, publisher: ChatLog, archiver_url: str
) -> None:
    await chatlog.publish("p", said("good 1"), "g1")
    for bad in (b"\xff\xfe", b'{"text": 1}', b"x" * 9000):
        await publisher.publish_raw("p", bad)
    await chatlog.publish("p", said("good 2"), "g2")
    page = get_json(f"{archiver_url}/messages/p?limit=2")
    assert [m["text"] for m in page["messages"]] == ["good 1", "good 2"]


@pytest.mark.parametrize(
    "path",
    [
        "/messages/bad%20name",
        "/messages/a.b",
        "/messages/ok?limit=0",
        "/messages/ok?after=-1",
        "/export/bad%20name",
    ],
)
def test_bad_input_is_400_json(archiver_url: str, path: str) -> None:
    status, body = http("GET", archiver_url + path)
    assert status == 400 and body["error"] in {"invalid_channel", "invalid_query"}


def test_readyz(archiver_url: str) -> None:
    assert get_json(archiver_url + "/readyz")["status"] == "ready"


async def test_channel_lists_are_paged_past_the_direct_get_limit(
    publisher: ChatLog, procs: NodeProcs
) -> None:
    """1,300 channels (more subjects than one batched Direct Get may answer, which made
    the archiver's /channels a 502): both services page them, 1,000 at a time by default,
    in name order, and a page ends where the next begins."""
    node, archiver = procs.node("a"), procs.archiver()
    names = [f"ch-{i:05d}" for i in range(1300)]
    for name in names:
        await publisher.publish_raw(name, b"hi")
    await publisher.publish_raw("zz-last", b"last")
    await until(lambda: len(get_json(node.url + "/channels?after=ch-01299")) == 1, what="applied")
    for base in (node.url, archiver.url):
        first = get_json(base + "/channels")
        assert [c["channel"] for c in first] == names[:1000], base
        rest = get_json(base + f"/channels?after={first[-1]['channel']}&limit=1000")
        assert [c["channel"] for c in rest] == [*names[1000:], "zz-last"], base
        assert all(c["count"] == 1 and c["last_seq"] > 0 for c in first + rest)
        two = get_json(base + "/channels?after=ch-00010&limit=2")
        assert [c["channel"] for c in two] == ["ch-00011", "ch-00012"]
        status, body = http("GET", base + "/channels?limit=5000")
        assert status == 400 and body["error"] == "invalid_query", body
