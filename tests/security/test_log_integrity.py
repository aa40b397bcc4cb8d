"""Log integrity, tried as an attacker would: every attack on the log and its snapshots
(issue 11) against a real nats-server with production credentials and permissions,
each asserted to fail safely: refused, nothing changed, nothing served that the log
does not hold. The recovery cases (a log that lost entries under the nodes) run real
node processes."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import nats as nats_client
import nkeys
import pytest
from nats.errors import NoServersError
from nats.errors import TimeoutError as NoAnswer
from nats.js import api
from nats.js.errors import APIError

from chat.app import create_app
from chat.snapshot import ReplicaState
from chat_cluster.natsserver import NatsServer
from chatlog import ChatLog, StreamSpec
from chatlog.names import SNAPSHOT_MANIFEST, SNAPSHOT_STREAM, STREAM_NAME
from chatlog.roles import ADMIN, ARCHIVER, NODE, PUBLISHER, READ_API, inbox_prefix
from tests.support import (
    ADMIN_TOKEN,
    PYTHON,
    NodeProcs,
    all_messages,
    client,
    ensure_streams,
    get_json,
    http,
    node_settings,
    open_log,
    raw,
    said,
    until,
    wait_until,
)

NOT_ADMIN = (NODE, ARCHIVER, PUBLISHER)


async def state(admin: ChatLog) -> tuple[object, ...]:
    """What an attack must not change: both streams' contents and configurations."""
    log = await admin.info()
    async with raw_admin(admin) as js:
        chat = await js.stream_info(STREAM_NAME)
        snaps = await js.stream_info(SNAPSHOT_STREAM)
    return (
        log.last_seq,
        log.messages,
        chat.config.max_bytes,
        chat.config.deny_delete,
        snaps.state.messages,
        snaps.config.max_bytes,
    )


@asynccontextmanager
async def raw_admin(admin: ChatLog) -> AsyncIterator[object]:
    nc = await nats_client.connect(
        admin.settings.nats_urls[0], nkeys_seed=admin.settings.creds, max_reconnect_attempts=1
    )
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def test_no_credentials_and_unknown_keys_are_refused(nats: NatsServer) -> None:
    with pytest.raises(NoServersError):
        async with raw(nats, None):
            pass
    stranger = nats.creds.directory.parent / "stranger.nk"  # type: ignore[union-attr]
    stranger.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    with pytest.raises(NoServersError):
        await nats_client.connect(
            nats.config.url, nkeys_seed=str(stranger), max_reconnect_attempts=1
        )


def config(name: str, subjects: str, **extra: object) -> bytes:
    return json.dumps({"name": name, "subjects": [subjects], **extra}).encode()


ATTACKS = [
    (f"$JS.API.STREAM.DELETE.{STREAM_NAME}", b""),
    (f"$JS.API.STREAM.PURGE.{STREAM_NAME}", b""),
    (f"$JS.API.STREAM.MSG.DELETE.{STREAM_NAME}", b'{"seq": 1}'),
    (f"$JS.API.STREAM.UPDATE.{STREAM_NAME}", config(STREAM_NAME, "chat.>", max_bytes=-1)),
    (f"$JS.API.STREAM.DELETE.{SNAPSHOT_STREAM}", b""),
    (f"$JS.API.STREAM.PURGE.{SNAPSHOT_STREAM}", b""),
    (f"$JS.API.STREAM.UPDATE.{SNAPSHOT_STREAM}", config(SNAPSHOT_STREAM, "chatsnap.>")),
    ("$JS.API.STREAM.CREATE.EVIL", config("EVIL", "evil.>")),
]


@pytest.mark.parametrize("role", NOT_ADMIN)
async def test_no_role_but_admin_can_delete_purge_or_change_a_stream(
    nats: NatsServer, chatlog: ChatLog, admin: ChatLog, role: str
) -> None:
    for i in range(3):
        await chatlog.publish("room", said(f"m{i}"), f"m{i}")
    before = await state(admin)
    async with raw(nats, role) as (nc, errors):
        for subject, body in ATTACKS:
            with pytest.raises(NoAnswer):  # no answer: refused by NATS
                await nc.request(subject, body, timeout=0.5)
        await nc.flush()
        await until(lambda: len(errors) >= len(ATTACKS), what="every refusal reported")
    assert all("permissions violation" in e for e in errors), errors
    assert await state(admin) == before


async def test_even_the_admin_cannot_remove_a_message(
    chatlog: ChatLog, admin: ChatLog, nats: NatsServer
) -> None:
    """deny_delete and deny_purge hold for everyone, and cannot be turned off."""
    await chatlog.publish("room", said("kept"), "k")
    before = await state(admin)
    async with raw(nats, ADMIN) as (nc, _):
        for subject, body in ATTACKS[1:3]:
            answer = json.loads((await nc.request(subject, body, timeout=2)).data)
            assert answer["error"]["code"] >= 400, answer
        config = (await nc.jetstream().stream_info(STREAM_NAME)).config
        config.deny_delete = False
        with pytest.raises(APIError) as refused:
            await nc.jetstream().update_stream(config)
        assert "deny" in (refused.value.description or "")
    assert await state(admin) == before


@pytest.mark.parametrize("role", [ARCHIVER, PUBLISHER])
async def test_only_nodes_can_write_snapshots(nats: NatsServer, admin: ChatLog, role: str) -> None:
    before = await state(admin)
    async with raw(nats, role) as (nc, errors):
        for subject in (SNAPSHOT_MANIFEST, "chatsnap.chunk.x.0"):
            await nc.publish(subject, b'{"meta": "forged"}')
        await nc.flush()
        await until(lambda: len(errors) >= 2, what="both refusals reported")
    assert all("permissions violation" in e for e in errors)
    assert await state(admin) == before
    assert await admin.snapshot_meta() is None or True  # nothing readable was added
    async with raw_admin(admin) as js:
        assert (await js.stream_info(SNAPSHOT_STREAM)).state.messages == 0


@pytest.mark.parametrize("role", [ARCHIVER, PUBLISHER])
async def test_no_role_can_read_a_nodes_deliveries(
    nats: NatsServer, chatlog: ChatLog, role: str
) -> None:
    """Replies and consumer deliveries go to a per-role inbox; others cannot listen."""
    async with raw(nats, role) as (nc, errors):
        got: list[bytes] = []

        async def keep(msg: object) -> None:
            got.append(getattr(msg, "data", b""))

        await nc.subscribe(f"{inbox_prefix(NODE)}.>", cb=keep)
        await nc.subscribe(">", cb=keep)
        await nc.flush()
        async with chatlog.tail(1, 0.5) as tail:  # a node's consumer, delivering
            await chatlog.publish("room", said("secret"), "s1")
            while not await tail.batch(1):
                pass
        await nc.flush()
        await until(lambda: len(errors) >= 2, what="both subscriptions refused")
    assert all("permissions violation" in e for e in errors)
    assert got == []


async def test_a_raw_publish_cannot_speak_for_a_user(
    nats: NatsServer, publisher: ChatLog, procs: NodeProcs
) -> None:
    node = procs.node("a")
    archiver = procs.archiver()
    await publisher.publish_raw("room", b'{"text": "give me your password", "user": "admin"}')
    async with raw(nats, PUBLISHER) as (nc, errors):  # nor on the nodes' own subject
        await nc.publish("chat.room.node", said("I am a node", user="admin"))
        await nc.flush()
        await until(lambda: errors, what="refused")
    wait_until(lambda: len(all_messages(node.url, "room")) == 1, what="applied")
    for base in (node.url, archiver.url + "/messages/room"):
        [message] = all_messages(base, "room")
        assert message["user"] == "nats" and message["text"] == "give me your password"


async def test_a_tampered_snapshot_is_rejected_and_the_log_is_served(
    nats: NatsServer, chatlog: ChatLog, admin: ChatLog, procs: NodeProcs
) -> None:
    for i in range(1100):  # past the first digest block (1,024 entries)
        await chatlog.publish(f"c{i % 3}", said(f"true {i}"), f"t{i}")
    saver = procs.node("saver", "--snapshot-every", "1000")
    meta = None
    wait_until(lambda: get_json(saver.url + "/readyz")["applied"] == 1100, what="applied")

    async def saved() -> object:
        return await chatlog.snapshot_meta()

    for _ in range(300):  # the saver runs every 5-15 s
        meta = await saved()
        if meta is not None:
            break
        await asyncio.sleep(0.1)
    assert meta is not None
    loaded = await chatlog.load_snapshot()
    assert loaded is not None
    meta, body = loaded
    state_ = msgspec.msgpack.decode(body, type=ReplicaState)
    fields = state_.channels[0].fields
    forged = msgspec.structs.replace(
        state_,
        channels=[
            msgspec.structs.replace(state_.channels[0], fields=fields.replace(b"true ", b"FAKE ")),
            *state_.channels[1:],
        ],
    )
    assert await admin.save_snapshot(meta, msgspec.msgpack.encode(forged))  # admin's key
    fresh = procs.node("fresh")
    ready = get_json(fresh.url + "/readyz")
    assert ready["snapshot_seq"] == 0 and ready["applied"] == 1100  # replayed the log
    texts = [m["text"] for c in ("c0", "c1", "c2") for m in all_messages(fresh.url, c)]
    assert len(texts) == 1100 and not any(t.startswith("FAKE") for t in texts)
    metrics = http("GET", fresh.url + "/metrics")[1].decode()
    assert 'chat_snapshot_rejected_total{reason="snapshot_rejected"} 1' in metrics


def not_append_only() -> api.StreamConfig:
    """A stream an operator made by hand without deny_delete/deny_purge."""
    config = StreamSpec().config(10_000_000)
    config.deny_delete = False
    config.deny_purge = False
    return config


async def make_streams_by_hand(nats: NatsServer) -> None:
    async with raw(nats, ADMIN) as (nc, _):
        js = nc.jetstream()
        await js.add_stream(not_append_only())
        await js.add_stream(StreamSpec().snapshot_config(1_000_000))


def verify(
    procs_nodes: list[str], nats: NatsServer, *extra: str
) -> subprocess.CompletedProcess[str]:
    assert nats.creds is not None
    env = {**os.environ, **nats.creds.env(ARCHIVER), "NATS_URL": nats.config.url}
    env["CHAT_TOKEN"] = ADMIN_TOKEN
    return subprocess.run(
        [PYTHON, "-m", "chat_cluster", "verify", "--nodes", ",".join(procs_nodes), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_deleted_and_purged_entries_are_detected_and_replicas_rebuilt(
    bare_nats: NatsServer, procs_bare: NodeProcs
) -> None:
    await make_streams_by_hand(bare_nats)
    node_log = await open_log(bare_nats, NODE)
    admin_log = await open_log(bare_nats, ADMIN)
    try:
        for i in range(20):
            await node_log.publish("room", said(f"m{i + 1}"), f"id{i + 1}")
        nodes = [procs_bare.node(n, "--diverge-after", "1") for n in ("a", "b")]
        for node in nodes:
            ready = get_json(node.url + "/readyz")
            assert ready["append_only"] is False  # followed, but said (and warned in its log)
        assert verify([n.url for n in nodes], bare_nats).returncode == 0
        async with raw(bare_nats, ADMIN) as (nc, _):
            deleted = json.loads(
                (await nc.request(f"$JS.API.STREAM.MSG.DELETE.{STREAM_NAME}", b'{"seq": 5}')).data
            )
            assert deleted.get("success") is True, deleted
        for node in nodes:
            wait_until(
                lambda n=node: (
                    [m["seq"] for m in all_messages(n.url, "room")]
                    == [s for s in range(1, 21) if s != 5]
                ),
                what=f"{node.name} rebuilt without seq 5",
            )
            metrics = http("GET", node.url + "/metrics")[1].decode()
            assert 'chat_replica_rebuilds_total{reason="diverged"} 1' in metrics
        assert verify([n.url for n in nodes], bare_nats).returncode == 0
        await admin_log.publish_raw("room", b"after")  # not a node: the admin's raw text
        async with raw(bare_nats, ADMIN) as (nc, _):
            await nc.request(f"$JS.API.STREAM.PURGE.{STREAM_NAME}", b"", timeout=2)
        for node in nodes:
            wait_until(lambda n=node: all_messages(n.url, "room") == [], what="purged")
            wait_until(lambda n=node: http("GET", n.url + "/readyz")[0] == 200, what="ready")
        assert verify([n.url for n in nodes], bare_nats).returncode == 0
    finally:
        await node_log.close()
        await admin_log.close()


async def test_verify_names_a_node_that_differs_and_the_seq(
    bare_nats: NatsServer, procs_bare: NodeProcs
) -> None:
    await make_streams_by_hand(bare_nats)
    node_log = await open_log(bare_nats, NODE)
    try:
        for i in range(10):
            await node_log.publish("room", said(f"m{i + 1}"), f"id{i + 1}")
        # A node that waits an hour before acting on a difference: verify must see it.
        slow = procs_bare.node("slow", "--diverge-after", "3600")
        ok = verify([slow.url], bare_nats)
        assert ok.returncode == 0 and "equal to the log at seq 10" in ok.stdout, ok.stdout
        async with raw(bare_nats, ADMIN) as (nc, _):
            await nc.request(f"$JS.API.STREAM.MSG.DELETE.{STREAM_NAME}", b'{"seq": 7}')
        out = verify([slow.url], bare_nats)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"{slow.url}: DIFFERS at seq 7" in out.stdout
    finally:
        await node_log.close()


async def test_a_log_restored_from_an_older_copy_is_detected(
    nats: NatsServer, chatlog: ChatLog, procs: NodeProcs
) -> None:
    """The node holds seqs the log no longer has, with the same epoch (the store was
    replaced by an older copy of itself, as a 1-to-3-server switch on one directory did)."""
    for i in range(5):
        await chatlog.publish("room", said(f"old {i}"), f"o{i}")
    await chatlog.close()
    nats.stop()
    backup = nats.config.store_dir.parent / "backup"
    shutil.copytree(nats.config.store_dir, backup)
    nats.start()
    nats.wait_ready()
    node = procs.node("a", "--diverge-after", "1")
    for i in range(5):
        status, _ = http("POST", node.url + "/messages", {"channel": "room", "text": f"new {i}"})
        assert status == 201
    wait_until(lambda: get_json(node.url + "/readyz")["applied"] == 10, what="applied 10")
    nats.stop()
    shutil.rmtree(nats.config.store_dir)
    shutil.copytree(backup, nats.config.store_dir)
    nats.start()
    nats.wait_ready()
    wait_until(
        lambda: (
            [m["text"] for m in all_messages(node.url, "room")] == [f"old {i}" for i in range(5)]
        ),
        timeout=30,
        what="the node serves the log as it is now",
    )
    assert (
        'chat_replica_rebuilds_total{reason="diverged"} 1'
        in http("GET", node.url + "/metrics")[1].decode()
    )


async def test_a_full_log_refuses_at_once_loses_nothing_and_recovers_when_raised(
    bare_nats: NatsServer,
) -> None:
    await ensure_streams(bare_nats, max_bytes=6_000, snapshot_max_bytes=100_000)
    with client(create_app(node_settings(bare_nats))) as node:
        wait_until(lambda: node.get("/readyz").status_code == 200, what="ready")
        acked: list[int] = []
        refused = None
        for i in range(200):
            started = time.monotonic()
            resp = node.post("/messages", json={"channel": "room", "text": f"message {i:03d}"})
            if resp.status_code == 201:
                acked.append(resp.json()["seq"])
                continue
            refused, took = resp, time.monotonic() - started
            break
        assert refused is not None and acked, "the log never filled"
        # 507 with a clear detail, answered by JetStream at once (the publish timeout is 3 s)
        assert refused.status_code == 507 and refused.json()["error"] == "log_full"
        assert "raise" in refused.json()["detail"] and took < 3.0
        ready = node.get("/readyz")
        assert ready.status_code == 200 and ready.json()["log_full"] is True  # reads go on
        assert value_of(node.get("/metrics").text, "chat_log_full") == 1
        page = node.get("/messages", params={"channel": "room", "limit": 1000}).json()
        assert [m["seq"] for m in page["messages"]] == acked  # nothing acknowledged lost

        # The operator raises the limit; nothing is restarted.
        await ensure_streams(bare_nats, max_bytes=60_000, snapshot_max_bytes=100_000)
        wait_until(
            lambda: (
                node.post("/messages", json={"channel": "room", "text": "again"}).status_code == 201
            ),
            what="writes to resume",
        )
        wait_until(lambda: node.get("/readyz").json()["log_full"] is False, what="not full")


def value_of(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


REFLECT_TO = [
    f"$JS.API.STREAM.DELETE.{STREAM_NAME}",
    f"$JS.API.STREAM.DELETE.{SNAPSHOT_STREAM}",
    f"$JS.API.STREAM.UPDATE.{STREAM_NAME}",
    f"$JS.API.STREAM.PURGE.{STREAM_NAME}",
    f"$JS.API.STREAM.CREATE.{STREAM_NAME}",
    "chat.room.node",
    SNAPSHOT_MANIFEST,
]


async def test_answers_cannot_be_turned_into_commands_or_messages(
    nats: NatsServer, chatlog: ChatLog, admin: ChatLog
) -> None:
    """NATS lets a client pick the reply subject of what it sends, and inside the log's
    account JetStream would store, or execute, an answer sent to one of its subjects
    (a stream's config stored as a raw message, read back with its answer addressed to
    $JS.API.STREAM.UPDATE, would rewrite the stream). The archiver and the publisher live
    in accounts of their own: their answers come back there, where they do nothing."""
    await chatlog.publish("room", said("genuine"), "g1")
    config = (await admin.info(), await state(admin))
    async with raw(nats, PUBLISHER) as (pub, _):
        # A stream configuration, stored as a raw message: seq 2.
        body = json.dumps({"name": STREAM_NAME, "subjects": ["chat.>"], "max_age": 2_000_000_000})
        await pub.publish("chat.room", body.encode())
        for reply in REFLECT_TO:  # the PubAck of each raw publish is addressed there
            await pub.publish("chat.room", b"reflected", reply=reply)
        await pub.flush()
    async with raw(nats, ARCHIVER) as (arc, _):
        for seq in (1, 2, 999_999):  # a record, the stored config, nothing (empty answer)
            for reply in REFLECT_TO:
                await arc.publish(
                    f"{READ_API}.DIRECT.GET.{STREAM_NAME}",
                    json.dumps({"seq": seq}).encode(),
                    reply=reply,
                )
        await arc.flush()
    expected = 2 + len(REFLECT_TO)  # the genuine one, the config, the reflected raw ones
    for _ in range(100):  # every raw publish stored (or the stream gone: info raises)
        if (await admin.info()).messages >= expected:
            break
        await asyncio.sleep(0.05)
    async with raw(nats, ARCHIVER) as (arc, _):  # a last round trip through READ
        await arc.request(f"{READ_API}.STREAM.INFO.{STREAM_NAME}", b"", timeout=2)
    after = await state(admin)
    info = await admin.info()
    assert info.epoch == config[0].epoch  # not deleted and recreated
    assert info.messages == expected and after[2:] == config[1][2:]
    stored = [await admin.entry_at(seq) for seq in range(1, expected + 1)]
    subjects = {entry.subject for entry in stored if entry is not None}
    assert subjects == {"chat.room.node", "chat.room.raw"}
    assert [e.seq for e in stored if e and e.subject == "chat.room.node"] == [1]  # only ours


async def test_a_log_that_lost_its_head_is_rebuilt_once_not_for_ever(
    bare_nats: NatsServer,
) -> None:
    """After a purge the replica holds nothing the log lacks: the audit, which once took
    any seq below the node's as one it should hold, must find nothing more to repair."""
    await make_streams_by_hand(bare_nats)
    writer = await open_log(bare_nats, NODE)
    settings = node_settings(bare_nats, audit_interval=0.05, diverge_after=0.3, snapshot_every=0)
    try:
        with client(create_app(settings)) as node:
            wait_until(lambda: node.get("/readyz").status_code == 200, what="ready")
            for i in range(20):
                await writer.publish("room", said(f"m{i}"), f"m{i}")
            follower = node.app.state.node.follower
            wait_until(lambda: node.get("/readyz").json()["applied"] == 20, what="applied")
            async with raw(bare_nats, ADMIN) as (nc, _):
                await nc.request(f"$JS.API.STREAM.PURGE.{STREAM_NAME}", b"", timeout=2)
            wait_until(lambda: node.get("/messages?channel=room").json()["messages"] == [])
            wait_until(lambda: node.get("/readyz").status_code == 200, what="ready again")
            audits = follower.integrity.audits
            wait_until(lambda: follower.integrity.audits > audits + 20, what="20 more audits")
            await writer.publish("room", said("after"), "after")
            wait_until(lambda: len(node.get("/messages?channel=room").json()["messages"]) == 1)
            wait_until(lambda: follower.integrity.audits > audits + 40, what="20 more")
            assert node.app.state.node.replica.rebuilds == {"diverged": 1}
    finally:
        await writer.close()


async def test_a_deleted_log_makes_nodes_unready_until_there_is_one_again(
    admin: ChatLog, chatlog: ChatLog, procs: NodeProcs
) -> None:
    node = procs.node("a")
    await chatlog.publish("room", said("first log"), "f")
    wait_until(lambda: get_json(node.url + "/readyz")["applied"] == 1, what="applied")
    await admin.delete_stream()
    wait_until(lambda: http("GET", node.url + "/readyz")[0] == 503, what="not ready")
    await admin.ensure_stream(StreamSpec())
    wait_until(lambda: http("GET", node.url + "/readyz")[0] == 200, what="ready again")
    assert all_messages(node.url, "room") == []  # the new log: empty


async def test_a_changed_text_limit_is_applied_by_every_node_alike(
    admin: ChatLog, chatlog: ChatLog, procs: NodeProcs, nats: NatsServer
) -> None:
    """The text limit is part of the rule every replica applies: when an operator changes
    it in the stream's metadata, every node rebuilds by the new one; verify agrees."""
    a = procs.node("a", "--diverge-after", "1")
    await chatlog.publish("room", said("short"), "s")
    await chatlog.publish("room", said("a text longer than twenty bytes"), "l")
    wait_until(lambda: len(all_messages(a.url, "room")) == 2, what="both")
    async with raw(nats, ADMIN) as (nc, _):
        js = nc.jetstream()
        config = (await js.stream_info(STREAM_NAME)).config
        config.metadata = {**(config.metadata or {}), "chat_cluster.max_text": "20"}
        await js.update_stream(config)
    wait_until(
        lambda: [m["text"] for m in all_messages(a.url, "room")] == ["short"],
        what="a rebuilt by the new limit",
    )
    b = procs.node("b")
    assert [m["text"] for m in all_messages(b.url, "room")] == ["short"]
    assert verify([a.url, b.url], nats).returncode == 0


async def test_verify_records_finds_what_a_signed_but_altered_snapshot_serves(
    chatlog: ChatLog, procs: NodeProcs, nats: NatsServer
) -> None:
    """A compromised node (out of scope for prevention) can sign an altered snapshot; the
    digest, which covers the log's entries, cannot see it; --records can."""
    for i in range(1100):
        await chatlog.publish("room", said(f"true {i}"), f"t{i}")
    saver = procs.node("saver", "--snapshot-every", "1000")
    wait_until(lambda: get_json(saver.url + "/readyz")["applied"] == 1100, what="applied")
    for _ in range(300):
        if await chatlog.snapshot_meta() is not None:
            break
        await asyncio.sleep(0.1)
    loaded = await chatlog.load_snapshot()
    assert loaded is not None
    meta, body = loaded
    forged = body.replace(b'"text":"true 7"', b'"text":"FAKE 7"')
    assert forged != body
    assert await chatlog.save_snapshot(meta, forged)  # with the node role's own key
    fresh = procs.node("fresh")
    assert get_json(fresh.url + "/readyz")["snapshot_seq"] == meta.seq
    assert verify([fresh.url], nats).returncode == 0  # the digest cannot tell
    out = verify([fresh.url], nats, "--records")
    assert out.returncode == 1 and f"{fresh.url}: DIFFERS at seq 8 (records)" in out.stdout


async def test_a_log_that_stops_answering_is_reported_and_sends_fail_at_once(
    nats: NatsServer,
) -> None:
    """A nats-server whose disk is full answers no publish at all (docs/full-disk.md): a
    paused one behaves the same to a client for a few seconds. After three sends without
    an answer, the node says so and answers sends at once instead of after the timeout."""
    with client(create_app(node_settings(nats))) as node:
        wait_until(lambda: node.get("/readyz").status_code == 200, what="ready")
        assert node.post("/messages", json={"text": "before"}).status_code == 201
        nats.signal(signal.SIGSTOP)
        try:
            sends = [
                asyncio.to_thread(node.post, "/messages", json={"text": f"lost {i}"})
                for i in range(3)
            ]
            unanswered = await asyncio.gather(*sends)  # each waits out the 3 s timeout
            assert [r.json()["error"] for r in unanswered] == ["log_unavailable"] * 3
            started = time.monotonic()
            refused = node.post("/messages", json={"text": "now"})
            assert refused.status_code == 503 and refused.json()["error"] == "log_stalled"
            assert time.monotonic() - started < 1.0  # at once, not after the timeout
            assert node.get("/readyz").json()["log_stalled"] is True
            assert value_of(node.get("/metrics").text, "chat_log_stalled") == 1
        finally:
            nats.signal(signal.SIGCONT)
        # One send every 5 s finds out whether the log stores again; then all do.
        wait_until(
            lambda: node.post("/messages", json={"text": "again"}).status_code == 201,
            timeout=20,
            what="sends to work again",
        )
        assert node.get("/readyz").json()["log_stalled"] is False
