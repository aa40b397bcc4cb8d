"""Fault scenarios: each runs real processes under load, injects a fault, heals it, and has
the checker read every replica. The quick ones run in the default session; ``-m faults``
(``nox -s faults``) runs them all."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from chat_cluster.credentials import Credentials
from chat_cluster.local import Service
from chatlog import ChatLog, StreamSpec
from chatlog.roles import ADMIN
from tests.faults.checker import Report, check
from tests.faults.harness import Cluster
from tests.faults.load import CHANNELS, Load
from tests.faults.presence import Holders, converged
from tests.faults.proxy import Proxies
from tests.support import all_messages, get_json, wait_until

CONVERGE_WITHIN = 5.0

Fault = Callable[[Cluster, Load], Awaitable[float]]


@pytest.fixture
def r1(nats_bin: Path, tmp_path: Path, creds: Credentials) -> Iterator[Cluster]:
    cluster = Cluster(nats_bin, tmp_path, creds, servers=1)
    try:
        cluster.start_nats()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def r3_proxied(nats_bin: Path, tmp_path: Path, creds: Credentials) -> Iterator[Cluster]:
    proxies = Proxies()
    cluster = Cluster(nats_bin, tmp_path, creds, servers=3, proxies=proxies)
    try:
        cluster.start_nats()
        yield cluster
    finally:
        cluster.close()
        proxies.close()


@pytest.fixture
def r3(nats_bin: Path, tmp_path: Path, creds: Credentials) -> Iterator[Cluster]:
    cluster = Cluster(nats_bin, tmp_path, creds, servers=3)
    try:
        cluster.start_nats()
        yield cluster
    finally:
        cluster.close()


def live(cluster: Cluster) -> list[str]:
    return [n.url for n in cluster.nodes.values() if n.proc is not None and n.proc.poll() is None]


async def run(
    name: str, cluster: Cluster, fault: Fault, nodes: int = 3, per_worker: int = 120
) -> Report:
    await asyncio.to_thread(cluster.start_archiver)
    for _ in range(nodes):
        await asyncio.to_thread(cluster.add_node)
    held = list(cluster.nodes.values())
    holders = Holders()
    for node in held:
        holders.hold(node)
    try:
        return await _run(name, cluster, fault, held, per_worker)
    finally:
        await holders.stop()


async def _run(
    name: str, cluster: Cluster, fault: Fault, held: list[Service], per_worker: int
) -> Report:
    load = Load(
        lambda: live(cluster), cluster.nats_urls, cluster.raw_creds(), per_worker=per_worker
    )
    load.start()
    healed_at = await fault(cluster, load)
    # NATS's own recovery is not ours to shorten: after a server comes back (or a partition
    # heals) the JetStream meta leader may be re-elected, and consumer creation waits for
    # it (measured up to ~8 s here; a returning server's higher Raft term can depose the
    # meta leader). Our 5 s bound starts once every server's /healthz is 200 again, and
    # the time before that is recorded in the report as nats_recovery_s.
    await asyncio.to_thread(wait_until, cluster.healthy, 60, "NATS healthy again")
    nats_recovery = time.monotonic() - healed_at
    await load.wait()
    since = max(healed_at + nats_recovery, time.monotonic())
    assert cluster.archiver is not None
    last_seq = await asyncio.to_thread(
        lambda: wait_until(
            lambda: get_json(cluster.archiver.url + "/messages/c0?limit=1")["last_seq"],
            what="stream last seq",
        )  # type: ignore[union-attr]
    )
    running = [n for n in cluster.nodes.values() if n.proc is not None and n.proc.poll() is None]
    report = await asyncio.to_thread(
        check, name, load.attempts, running, cluster.archiver, last_seq, since
    )
    report.nats_recovery_s = nats_recovery
    report.save()
    print(report.summary())
    assert report.ok(), report.examples
    assert report.acknowledged > 0 and report.failed == 0, report.summary()
    assert report.convergence_s is not None and report.convergence_s <= CONVERGE_WITHIN, (
        report.summary()
    )
    # Presence heals too: every running node shows exactly the users of running nodes.
    presence_s = await converged(running, held)
    print(f"{name}: presence agreed on every node {presence_s:.1f}s after the check")
    return report


async def until_acked(load: Load, count: int) -> None:
    def acked() -> bool:
        return sum(a.seq is not None for a in load.attempts.values()) >= count

    await asyncio.to_thread(wait_until, acked, 60, f"{count} acked")


# --- chat nodes -------------------------------------------------------------------------


async def test_sigkill_a_node_under_load_and_restart_it(r1: Cluster) -> None:
    async def fault(cluster: Cluster, load: Load) -> float:
        await until_acked(load, 60)
        victim = cluster.nodes["node-2"]
        cluster.kill(victim)
        await until_acked(load, 150)
        victim.start()
        await asyncio.to_thread(cluster.wait_ready, victim)
        return time.monotonic()

    await run("sigkill_node", r1, fault, per_worker=80)


@pytest.mark.faults
async def test_sigstop_a_node_past_its_heartbeat(r1: Cluster) -> None:
    async def fault(cluster: Cluster, load: Load) -> float:
        await until_acked(load, 60)
        victim = cluster.nodes["node-1"]
        cluster.pause(victim)
        await until_acked(load, 200)  # several seconds: past the 1 s heartbeat, 3 s stall
        cluster.resume(victim)
        return time.monotonic()

    await run("sigstop_node", r1, fault)


@pytest.mark.faults
async def test_scale_from_2_to_5_nodes_under_load(r1: Cluster) -> None:
    async def fault(cluster: Cluster, load: Load) -> float:
        for target in (100, 150, 200):
            await until_acked(load, target)
            await asyncio.to_thread(cluster.add_node)
        return time.monotonic()

    report = await run("scale_2_to_5", r1, fault, nodes=2)
    assert report.replicas_checked == 6


@pytest.mark.faults
async def test_rolling_restart_of_every_node(r1: Cluster) -> None:
    async def fault(cluster: Cluster, load: Load) -> float:
        await until_acked(load, 50)
        for node in list(cluster.nodes.values()):
            await asyncio.to_thread(cluster.restart, node)  # SIGTERM, then start again
            await asyncio.to_thread(cluster.wait_ready, node)
        return time.monotonic()

    await run("rolling_restart", r1, fault)


# --- NATS -------------------------------------------------------------------------------


@pytest.mark.faults
async def test_r1_sigkill_nats_and_restart_on_the_same_store(r1: Cluster) -> None:
    async def fault(cluster: Cluster, load: Load) -> float:
        await until_acked(load, 80)
        server = cluster.servers[0]
        server.kill()
        await asyncio.sleep(1.0)  # the outage itself: clients see failures and retry
        server.start()
        await asyncio.to_thread(server.wait_ready)
        return time.monotonic()

    await run("r1_nats_sigkill", r1, fault)


@pytest.mark.faults
async def test_r3_sigkill_the_stream_leader(r3: Cluster) -> None:
    async def fault(cluster: Cluster, load: Load) -> float:
        await until_acked(load, 80)
        leader = await asyncio.to_thread(cluster.stream_leader)
        leader.kill()
        await until_acked(load, 200)
        leader.start()
        await asyncio.to_thread(leader.wait_ready)
        return time.monotonic()

    await run("r3_kill_leader", r3, fault)


@pytest.mark.faults
async def test_r3_sigkill_a_follower(r3: Cluster) -> None:
    async def fault(cluster: Cluster, load: Load) -> float:
        await until_acked(load, 80)
        leader = await asyncio.to_thread(cluster.stream_leader)
        follower = next(s for s in cluster.servers if s is not leader)
        follower.kill()
        await until_acked(load, 200)
        follower.start()
        await asyncio.to_thread(follower.wait_ready)
        return time.monotonic()

    await run("r3_kill_follower", r3, fault)


@pytest.mark.faults
async def test_r3_restart_all_three_one_by_one(r3: Cluster) -> None:
    async def fault(cluster: Cluster, load: Load) -> float:
        await until_acked(load, 60)
        for server in cluster.servers:
            server.stop()
            server.start()
            await asyncio.to_thread(server.wait_ready)
            await until_acked(load, sum(a.seq is not None for a in load.attempts.values()) + 20)
        return time.monotonic()

    await run("r3_restart_all", r3, fault)


@pytest.mark.faults
async def test_r3_partition_the_stream_leader_and_heal(r3_proxied: Cluster) -> None:
    async def fault(cluster: Cluster, load: Load) -> float:
        await until_acked(load, 80)
        leader = await asyncio.to_thread(cluster.stream_leader)
        cluster.partition(leader)
        others = [s for s in cluster.servers if s is not leader]

        def majority_has_leaders() -> bool:
            seen = [cluster.leaders(s) for s in others]
            return all(m and st and leader.config.name not in (m, st) for m, st in seen)

        # A partition that outlasts the elections: the other two elect new meta and
        # stream leaders and take writes; only then does the network heal.
        await asyncio.to_thread(wait_until, majority_has_leaders, 30, "leaders without it")
        await until_acked(load, 200)
        cluster.heal(leader)
        return time.monotonic()

    await run("r3_partition_leader", r3_proxied, fault)


# --- the log itself -----------------------------------------------------------------------


@pytest.mark.faults
async def test_a_deleted_and_recreated_stream_is_a_new_epoch_everywhere(r1: Cluster) -> None:
    """Under load, the stream is deleted and created again: every node drops the old log,
    moves to the new epoch, and then serves exactly the new log (the archiver's)."""
    await asyncio.to_thread(r1.start_archiver)
    for _ in range(3):
        await asyncio.to_thread(r1.add_node)
    load = Load(lambda: live(r1), r1.nats_urls, r1.raw_creds(), per_worker=100)
    load.start()
    await until_acked(load, 60)
    log = await ChatLog.open(r1.log_settings(ADMIN), "test admin", ADMIN)
    try:
        old = (await log.info()).epoch
        await log.delete_stream()
        deleted_at = time.monotonic()
        await log.ensure_stream(StreamSpec(replicas=r1.replicas))
        recreated_at = time.monotonic()
        await load.wait()
        new = (await log.info()).epoch
        last_seq = (await log.info()).last_seq
    finally:
        await log.close()
    assert new != old
    nodes = list(r1.nodes.values())

    def all_on_new_epoch() -> bool:
        return all(get_json(n.url + "/readyz")["epoch"] == new for n in nodes)

    await asyncio.to_thread(wait_until, all_on_new_epoch, 10, "new epoch everywhere")
    assert r1.archiver is not None
    # The checker with only what the new log acknowledged: anything acked into the old log
    # is gone with it, by design. An ack that arrived between the delete and the end of our
    # create may be either log's (the stream exists again before ensure_stream returns):
    # those count as the new log's when the new log holds them.
    in_new = await asyncio.to_thread(
        lambda: {
            m["id"]
            for c in CHANNELS
            for m in all_messages(f"{r1.archiver.url}/messages/{c}", c)  # type: ignore[union-attr]
        }
    )
    new_log = {
        k: v
        for k, v in load.attempts.items()
        if v.seq is None or v.acked_at > recreated_at or (v.acked_at > deleted_at and k in in_new)
    }
    report = await asyncio.to_thread(
        check, "stream_recreated", new_log, nodes, r1.archiver, last_seq, time.monotonic()
    )
    assert report.ok() and report.acknowledged > 0, report.examples
    archived = await asyncio.to_thread(
        lambda: [
            (m["seq"], m["id"])
            for c in CHANNELS
            for m in all_messages(f"{r1.archiver.url}/messages/{c}", c)
        ]  # type: ignore[union-attr]
    )
    for node in nodes:
        held = await asyncio.to_thread(
            lambda n=node: [(m["seq"], m["id"]) for c in CHANNELS for m in all_messages(n.url, c)]
        )
        assert held == archived
