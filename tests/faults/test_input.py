"""Bad input never crashes or stalls a node and never changes what is stored.

Hypothesis generates REST bodies, WebSocket frames and raw payloads on the
subject; real node processes answer them. Whatever a node acknowledged must be
exactly what every replica then holds; nothing else may appear.
"""

import asyncio
import json
import string
from typing import Any

import httpx
import nats as nats_client
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_cluster.local import Service
from chatlog.roles import PUBLISHER
from tests.faults.load import CHANNELS
from tests.support import NodeProcs, all_messages, bearer, get_json, http, wait_until

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
keys = st.sampled_from(["op", "channel", "text", "id", "user", "after", "sent_at", "extra"])
frames = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.dictionaries(
        keys, json_values | st.sampled_from(["join", "send", "leave", "c0"]), max_size=5
    ).map(json.dumps),
    json_values.map(json.dumps),
)


def history(node: Service) -> list[tuple[int, str]]:
    return [
        (m["seq"], m["id"])
        for c in [*CHANNELS, "default-channel"]
        for m in all_messages(node.url, c)
    ]


def assert_problem(status: int, body: Any) -> None:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, body


async def test_fuzzed_rest_bodies(procs: NodeProcs) -> None:
    node, other = procs.node("a"), procs.node("b")
    acked: set[str] = set()
    client = httpx.Client(base_url=node.url, timeout=10, headers=bearer())

    @FUZZ
    @given(body=frames)
    def post(body: str | bytes) -> None:
        resp = client.post("/messages", content=body, headers={"content-type": "application/json"})
        if resp.status_code == 201:
            acked.add(resp.json()["id"])
        else:
            assert_problem(resp.status_code, resp.json())

    try:
        await asyncio.to_thread(post)
    finally:
        await asyncio.to_thread(client.close)
    assert http("GET", node.url + "/healthz")[0] == 200
    for replica in (node, other):
        wait_until(lambda r=replica: {i for _, i in history(r)} == acked, what="same set")
    assert history(node) == history(other)


async def test_fuzzed_websocket_frames(procs: NodeProcs) -> None:
    node = procs.node("a")
    url = node.url.replace("http", "ws") + "/ws"
    acked: set[str] = set()
    closes: list[int] = []
    examples: list[str | bytes] = []

    @FUZZ
    @given(frame=frames)
    def collect(frame: str | bytes) -> None:
        examples.append(frame)

    collect()
    ws = await websockets.connect(url, additional_headers=bearer())
    try:
        for frame in examples:
            try:
                await ws.send(frame)
                async with asyncio.timeout(5):
                    answer = json.loads(await ws.recv())
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None
                closes.append(exc.rcvd.code)
                ws = await websockets.connect(url, additional_headers=bearer())
                continue
            assert answer["op"] in {"error", "ack", "joined", "left"}, answer
            if answer["op"] == "error":
                assert answer["code"] and answer["detail"]
            if answer["op"] == "ack":
                acked.add(answer["id"])
            if answer["op"] == "joined":
                await ws.send(json.dumps({"op": "leave", "channel": answer["channel"]}))
                async with asyncio.timeout(5):
                    while json.loads(await ws.recv())["op"] != "left":
                        pass
    finally:
        await ws.close()
    assert set(closes) <= {1008}
    assert http("GET", node.url + "/readyz")[0] == 200
    wait_until(lambda: {i for _, i in history(node)} == acked, what="stored == acked")


async def test_raw_poison_on_the_subject_is_skipped_the_same_everywhere(
    procs: NodeProcs, nats: Any
) -> None:
    a = procs.node("a")
    payloads: list[bytes] = []

    @FUZZ
    @given(
        data=st.one_of(
            st.binary(max_size=64),
            st.binary(min_size=8190, max_size=8200),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.dictionaries(keys, json_values, max_size=4).map(lambda d: json.dumps(d).encode()),
            st.text(alphabet=string.printable, max_size=30).map(str.encode),
        )
    )
    def collect(data: bytes) -> None:
        payloads.append(data)

    collect()
    nats_url = nats.config.url
    # What `nats pub` does, with the publisher role's credentials.
    nc = await nats_client.connect(nats_url, nkeys_seed=str(nats.creds.path(PUBLISHER)))
    try:
        for data in payloads:
            await nc.publish("chat.c0", data)
        await nc.flush()
    finally:
        await nc.close()
    b = procs.node("b")
    archiver = procs.archiver()
    last = get_json(f"{archiver.url}/messages/c0?limit=1")["last_seq"]
    assert last == len(payloads), nats_url
    for node in (a, b):
        wait_until(lambda n=node: get_json(n.url + "/readyz")["applied"] == last, what="applied")
    assert history(a) == history(b)
    ids_a = [i for _, i in history(a)]
    archived = [m["id"] for m in all_messages(archiver.url + "/messages/c0", "c0")]
    assert archived == ids_a
    skipped = get_json(a.url + "/readyz")["skipped"]
    assert skipped == get_json(b.url + "/readyz")["skipped"]
    assert skipped + len(ids_a) == len(payloads)
    assert http("POST", a.url + "/messages", {"channel": "c0", "text": "still fine"})[0] == 201
