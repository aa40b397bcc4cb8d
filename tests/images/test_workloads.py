"""The images built from deploy/Dockerfile, and the chart's workloads run as containers
with their manifests' exact settings (tests/images/pods.py): 3 NATS pods that find each
other by DNS, the ensure-stream Job, 3 chat pods and the archiver. Against them: the
README's Kubernetes walkthrough (deploy/k3d/smoke.sh's steps), a rolling replacement of
the chat pods under load, a NATS pod restart under load, and the integrity checks from
outside the pods' network. ``python3 -m nox -s image`` builds the images, then runs this."""

import asyncio
import contextlib
import copy
import json
import random
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats as nats_client
import pytest
import yaml
from nats.errors import TimeoutError as NoAnswer

from chatlog.names import STREAM_NAME
from chatlog.roles import NODE, PUBLISHER, inbox_prefix
from tests.deploy.chart import JWKS_SECRET, RELEASE, Manifest, given, render, secrets_of
from tests.deploy.test_chart_nats import hello, in_pod_script
from tests.faults.checker import check
from tests.faults.load import CHANNELS, Attempt, Load
from tests.images.build import ARCHIVER_IMAGE, CHAT_IMAGE, STAND_IN_LABEL, nats_image
from tests.images.podman import image_exists, podman
from tests.images.pods import Cluster, Pod
from tests.security.test_log_integrity import ATTACKS
from tests.support import all_messages, http, token, wait_until

pytestmark = pytest.mark.image

NATS_PODS = 3
CHAT_PODS = 3


@pytest.fixture(scope="module", autouse=True)
def images() -> None:
    missing = [i for i in (CHAT_IMAGE, ARCHIVER_IMAGE, nats_image()) if not image_exists(i)]
    assert not missing, f"not built: {missing}; run `python3 -m nox -s image`"


class Release:
    """The running workloads of one rendered release."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.nats: dict[str, Pod] = {}
        self.chat: list[Pod] = []
        self.archiver: Pod | None = None
        self.serial = 0
        self.attempts: dict[str, Attempt] = {}
        """Every load's sends in this release: each check covers all of them."""

    def workload(self, kind: str, name: str) -> Manifest:
        return self.cluster.find(kind, f"{RELEASE}-{name}")

    def password(self, role: str) -> str:
        return self.cluster.secrets[f"{RELEASE}-nats-credentials"][role]

    def nats_urls(self) -> list[str]:
        return [f"nats://{pod.ip}:4222" for pod in self.nats.values() if not pod.stopped]

    def start_nats(self, name: str) -> Pod:
        pod = self.cluster.start(self.workload("StatefulSet", "nats"), name)
        self.nats[name] = pod
        return pod

    def start_chat(self) -> Pod:
        """A Deployment pod: a new name each time, as a ReplicaSet names them."""
        self.serial += 1
        pod = self.cluster.start(
            self.workload("Deployment", "chat"), f"{RELEASE}-chat-{self.serial}"
        )
        self.chat.append(pod)
        return pod

    def serving(self) -> list[str]:
        """The chat Service's endpoints: pods seen ready and not stopping."""
        return [pod.url for pod in self.chat if pod.in_service]


def values_file(path: Path) -> Path:
    """The default values, the images built here (the NATS one only because no registry
    serves the chart's), and the operator's JWKS Secret (the tests' key)."""
    repository, tag = nats_image().rsplit(":", 1)
    chat_repository, chat_tag = CHAT_IMAGE.rsplit(":", 1)
    values = {
        "image": {"repository": chat_repository, "tag": chat_tag},
        "nats": {"image": {"repository": repository, "tag": tag}},
        "auth": {"jwksSecret": JWKS_SECRET},
    }
    path.write_text(yaml.safe_dump(values))
    return path


def wait_ready(pods: list[Pod], timeout: float) -> None:
    """Each pod ready (its startup probe first, as the kubelet runs them), then in
    service; on a timeout, the pod's output says why."""
    deadline = time.monotonic() + timeout
    for pod in pods:
        while not (pod.probe("startupProbe") and pod.ready()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pod.name} not ready in {timeout}s:\n{pod.logs()[-3000:]}")
            time.sleep(0.2)
        pod.in_service = True


def hooks(manifests: list[Manifest], event: str) -> list[Manifest]:
    return [
        m
        for m in manifests
        if event in m["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(",")
    ]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """Installed as `helm install --wait` installs: every resource that is not a hook at
    once (the NATS pods in parallel, as podManagementPolicy Parallel has them, the
    Deployments' pods, the Jobs), then a wait for the workloads to be ready, then the
    post-install hooks. A chart whose pods wait for a hook would time out here."""
    workdir = tmp_path_factory.mktemp("release")
    manifests = render(values_file(workdir / "values.yaml"))
    cluster = Cluster(manifests, secrets_of(manifests, given("default")), workdir)
    running = Release(cluster)
    try:
        hooked = hooks(manifests, "post-install")
        jobs = [cluster.start_job(m) for m in manifests if m["kind"] == "Job" and m not in hooked]
        for i in range(NATS_PODS):
            running.start_nats(f"{RELEASE}-nats-{i}")
        for _ in range(CHAT_PODS):
            running.start_chat()
        running.archiver = cluster.start(
            running.workload("Deployment", "archiver"), f"{RELEASE}-archiver-1"
        )
        wait_ready([*running.nats.values(), *running.chat, running.archiver], 180)
        for hook in hooked:
            jobs.append(cluster.start_job(hook))
        assert [j.name.rsplit("-", 1)[0] for j in jobs] == [f"{RELEASE}-ensure-stream-1"]
        for job in jobs:  # the Job as admin: created both streams, then exited 0
            code, output = cluster.finish_job(job, timeout=60)
            assert code == 0, output
        yield running
    finally:
        cluster.close()


def test_both_targets_run_as_the_chart_runs_them() -> None:
    """uid and gid 10001 (the chart's runAsUser/runAsGroup), entrypoint chat-cluster with
    each target's command, and a context without the repository's tests or history."""
    for image, command in ((CHAT_IMAGE, "node"), (ARCHIVER_IMAGE, "archiver")):
        config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
        assert config["User"] == "10001:10001", config
        assert config["Entrypoint"] == ["chat-cluster"] and config["Cmd"] == [command], config
        ids = podman("run", "--rm", "--entrypoint", "id", image).stdout.split()
        assert ids[:2] == ["uid=10001(chat)", "gid=10001(chat)"], ids
        site = "/opt/chat-cluster/lib/python3.11/site-packages"
        look = f"cd {site} && ls -d chat tests *.egg-info /src /opt/chat-cluster/.git 2>/dev/null"
        found = podman("run", "--rm", "--entrypoint", "sh", image, "-c", f"{look}; true")
        assert found.stdout.split() == ["chat"], f"in {image}: {found.stdout}"
        version = podman("run", "--rm", "--entrypoint", "nats", image, "--version").stdout
        assert version.strip() == "v0.5.0", version
    bases = podman("images", "--format", "{{.Repository}}:{{.Tag}} {{.Labels}}").stdout
    print("\n".join(line for line in bases.splitlines() if STAND_IN_LABEL in line))


def kernel_view(pod: Pod) -> tuple[dict[str, str], str]:
    """The pod's main process as the kernel sees it: /proc/<pid>/status fields, and the
    mount options of its root filesystem."""
    pid = podman("inspect", "--format", "{{.State.Pid}}", pod.container_name).stdout.strip()
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    root = next(
        line.split()[5]
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    return status, root


def test_pods_run_with_the_manifests_security_settings(release: Release) -> None:
    """Read from the kernel, not from podman's configuration: each pod's process runs as
    its manifest's user and group (with fsGroup), with no capabilities, no new
    privileges, and a read-only root filesystem where the manifest asks for one."""
    assert release.archiver is not None
    pods = [*release.nats.values(), *release.chat, release.archiver]
    for pod in pods:
        security = {**pod.spec["securityContext"], **pod.box["securityContext"]}
        status, root = kernel_view(pod)
        user, group = str(security["runAsUser"]), str(security["runAsGroup"])
        assert status["Uid"].split() == [user] * 4, (pod.name, status["Uid"])
        assert status["Gid"].split() == [group] * 4, (pod.name, status["Gid"])
        assert str(security["fsGroup"]) in status["Groups"].split(), (pod.name, status)
        assert security["capabilities"]["drop"] == ["ALL"]
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0, (pod.name, status)
        assert int(status["CapBnd"], 16) == 0, (pod.name, status["CapBnd"])
        assert security["allowPrivilegeEscalation"] is False and status["NoNewPrivs"] == "1"
        assert security["readOnlyRootFilesystem"] is True
        assert "ro" in root.split(","), (pod.name, root)
        assert status["Seccomp"] == "2", (pod.name, "RuntimeDefault: a seccomp filter")
    for pod in (*release.chat, release.archiver):  # the NATS image has no shell
        wrote = pod.exec("sh", "-c", "touch /opt/x; touch /tmp/ok && echo tmp-ok")
        assert "Read-only file system" in wrote.stderr, wrote
        assert wrote.stdout.split() == ["tmp-ok"], wrote  # the emptyDir is writable
    # Every liveness probe passes on the running pods.
    assert all(p is not None and p.probe("livenessProbe") for p in pods)
    # The NATS servers found each other by their DNS names: one cluster of three.
    for pod in release.nats.values():
        with urllib.request.urlopen(f"http://{pod.ip}:8222/routez", timeout=5) as resp:
            routes = json.load(resp)["routes"]
        assert {r["remote_name"] for r in routes} == set(release.nats) - {pod.name}, routes


def test_the_kubernetes_walkthrough(release: Release) -> None:
    """deploy/k3d/smoke.sh's steps, against the pods (the Ingress's routes are not run:
    each request goes to a pod, as the Ingress would send it)."""
    text = f"smoke {time.time_ns()}"
    pod = release.chat[0]
    auth = token("smoke", read=["*"], send=["*"], ttl=3600)

    refused = pod.exec(
        "env",
        "-u",
        "NATS_USER",
        "-u",
        "NATS_PASSWORD",
        "nats",
        "pub",
        "chat.default-channel",
        f"anonymous {text}",
    )
    assert refused.returncode != 0, refused
    assert "Authorization Violation" in refused.stderr + refused.stdout, refused

    published = pod.exec(
        "sh",
        "-c",
        in_pod_script("AS_PUBLISHER"),
        "nats",
        "pub",
        "chat.default-channel",
        text,
        stdin=release.password(PUBLISHER) + "\n",
    )
    assert published.returncode == 0, published

    def shows(base: str) -> bool:
        status, body = http("GET", base, token=auth)
        return status == 200 and any(m["text"] == text for m in body["messages"])

    for chat in release.chat:
        wait_until(lambda c=chat: shows(f"{c.url}/messages"), 30, f"{chat.name} shows it")
    assert release.archiver is not None
    wait_until(lambda: shows(f"{release.archiver.url}/messages/default-channel"), 30, "archiver")
    assert all("anonymous" not in m["text"] for m in all_messages(pod.url, "default-channel"))

    status, body = http("GET", f"{pod.url}/messages", token=None)
    assert status == 401, body
    status, body = http(
        "POST",
        f"{pod.url}/messages",
        {"text": f"{text} via REST", "id": f"smoke-{time.time_ns()}"},
        token=auth,
    )
    assert status == 201, body

    roll(release)  # kubectl rollout restart
    for chat in release.chat:
        texts = [m["text"] for m in all_messages(chat.url, "default-channel")]
        assert text in texts and f"{text} via REST" in texts, chat.name


def roll(release: Release, max_acked: Callable[[], int] | None = None) -> list[int]:
    """A RollingUpdate with maxSurge 1, maxUnavailable 0: a new pod, ready, then an old one
    goes (preStop, SIGTERM). Returns each new pod's applied seq when it first said ready;
    with ``max_acked``, checks that by then it held every message acknowledged before it
    started (what is acknowledged later reaches it live, and the final check covers it)."""
    applied = []
    for old in list(release.chat):
        floor = max_acked() if max_acked else 0
        new = release.start_chat()
        deadline = time.monotonic() + 120
        while True:
            status, body = 0, None
            with contextlib.suppress(OSError):  # not listening yet
                status, body = http("GET", f"{new.url}/readyz", timeout=2)
            if status == 200:
                assert body["applied"] >= floor, (new.name, body, floor)
                applied.append(body["applied"])
                new.in_service = True
                break
            assert time.monotonic() < deadline, f"{new.name} never ready:\n{new.logs()[-3000:]}"
            time.sleep(0.1)
        release.cluster.stop(old)
        release.chat.remove(old)
    return applied


class Traffic:
    """The fault suite's clients (REST and WebSocket senders that retry the same id on
    another pod) against the serving chat pods, bounded in count and time."""

    def __init__(self, release: Release, tag: str) -> None:
        self.release = release
        self.load = Load(
            release.serving,
            ",".join(release.nats_urls()),
            "",
            per_worker=4000,
            interval=0.05,
            deadline=300,
            tag=tag,
        )

    def acked(self) -> int:
        return sum(a.seq is not None for a in list(self.load.attempts.values()))

    def max_acked(self) -> int:
        return max((a.seq or 0 for a in list(self.load.attempts.values())), default=0)

    async def more(self, count: int, what: str, timeout: float = 60) -> None:
        """Wait for ``count`` more acknowledged sends."""
        target = self.acked() + count
        await asyncio.to_thread(wait_until, lambda: self.acked() >= target, timeout, what)

    async def __aenter__(self) -> "Traffic":
        self.load.start(rest=2, ws=1, raw=0)
        await self.more(30, "load acknowledged")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.load.stop()

    async def check(self, scenario: str, since: float) -> None:
        """Every send of the release so far, on every chat pod and the archiver: nothing
        acknowledged lost, nothing twice, one order."""
        self.release.attempts.update(self.load.attempts)
        last = max(a.seq or 0 for a in self.release.attempts.values())
        report = await asyncio.to_thread(
            check,
            scenario,
            self.release.attempts,
            self.release.chat,
            self.release.archiver,
            last,
            since,
        )
        print(report.summary())
        assert report.ok(), report.examples
        assert report.failed == 0 and report.acknowledged > 0, report.summary()
        assert report.convergence_s is not None, report.summary()


async def test_a_rolling_replacement_under_load_loses_nothing(release: Release) -> None:
    async with Traffic(release, "roll-") as traffic:
        started = time.monotonic()
        applied = await asyncio.to_thread(roll, release, traffic.max_acked)
        rolled_at = time.monotonic()
        await traffic.more(30, "sends after the roll")
    during = [a for a in traffic.load.attempts.values() if started <= a.acked_at <= rolled_at]
    assert during and len(applied) == CHAT_PODS  # the roll really happened under load
    await traffic.check("image_rollout", rolled_at)


def stream_state(pod: Pod) -> tuple[int, int, int, int] | None:
    """The CHAT stream on this server, from its monitoring port: (first seq, last seq,
    messages, bytes); None while the server does not answer."""
    url = f"http://{pod.ip}:8222/jsz?streams=true"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            found: dict[str, Any] = json.load(resp)
    except OSError:
        return None
    for account in found.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] == STREAM_NAME:
                state = stream["state"]
                return state["first_seq"], state["last_seq"], state["messages"], state["bytes"]
    return None


def log_bytes(claim: str, release: Release) -> int:
    """Bytes of the CHAT stream's message blocks in a NATS pod's volume."""
    volume = Path(release.cluster.mountpoint(claim))
    blocks = volume.glob(f"jetstream/*/streams/{STREAM_NAME}/msgs/*.blk")
    return sum(block.stat().st_size for block in blocks)


async def test_a_nats_pod_restart_under_load_loses_nothing(release: Release) -> None:
    """The StatefulSet's pod 1 stopped as the kubelet stops it (lame duck, SIGTERM) and
    started again on its volume: the log stays writable, and the restarted server holds
    every message again."""
    name = f"{RELEASE}-nats-1"
    async with Traffic(release, "natsrestart-") as traffic:
        stopping, old = time.monotonic(), release.nats[name]
        await asyncio.to_thread(release.cluster.stop, old)
        stopped_in = time.monotonic() - stopping
        await traffic.more(30, "sends with a server down")
        # The container is gone; its claim is not, and holds the server's copy of the log.
        held = await asyncio.to_thread(log_bytes, release.cluster.claims[name], release)
        assert held > 0, "the stopped server's volume holds no message blocks"
        restarted = release.start_nats(name)
        await asyncio.to_thread(wait_ready, [restarted], 120)
        healed_at = time.monotonic()
        await traffic.more(30, "sends after the restart")
    said = [line for line in old.log_lines if "lame duck" in line.lower() or "Exiting" in line]
    print(f"{name} stopped in {stopped_in:.1f}s:", *said, sep="\n")
    # The preStop hook reached the server (the pid file, the signal): it went lame duck.
    assert any("entering lame duck mode" in line.lower() for line in said), old.log_lines[-20:]
    # It started from that copy: it restored the stream's messages from its volume.
    pattern = rf"Restored ([\d,]+) messages for stream '[^']*> {STREAM_NAME}'"
    restored = re.findall(pattern, restarted.logs())
    assert restored and int(restored[0].replace(",", "")) > 0, restarted.logs()[-3000:]
    await traffic.check("image_nats_restart", healed_at)
    # The restarted server's replica of the log caught up with the others'.
    last = traffic.max_acked()
    await asyncio.to_thread(
        wait_until,
        lambda: {(stream_state(p) or (0, 0))[1] for p in release.nats.values()} == {last},
        60,
        "every server's replica of the log at the last seq",
    )


async def test_no_credential_less_access_from_outside(release: Release) -> None:
    """From the host, outside the pods' network: every NATS pod refuses a client without
    credentials or with a wrong password, and a route without the route password; the
    node's password cannot delete, purge or change the log; the chat pods and the
    archiver refuse requests without a valid token."""
    before = {pod.name: stream_state(pod) for pod in release.nats.values()}
    assert None not in before.values(), before
    for pod in release.nats.values():
        for port, credentials in (
            (4222, (None, None)),
            (4222, (NODE, "not-the-password")),
            (4222, ("route", release.password(NODE))),
            (6222, (None, None)),  # a route without the route password
            (6222, ("route", release.password(NODE))),
        ):
            _, answer = hello((pod.ip, port), None, *credentials)
            assert "Authorization Violation" in answer, (pod.name, port, answer)

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats_client.connect(
        release.nats_urls()[0],
        user=NODE,
        password=release.password(NODE),
        inbox_prefix=inbox_prefix(NODE),
        error_cb=on_error,
        max_reconnect_attempts=0,
    )
    try:
        for subject, body in ATTACKS:
            with pytest.raises(NoAnswer):
                await nc.request(subject, body, timeout=0.5)
        with contextlib.suppress(Exception):
            await nc.publish("chat.default-channel", b'{"text": "forged"}')
        await nc.flush()
        await asyncio.to_thread(wait_until, lambda: len(errors) > len(ATTACKS), 10, "every refusal")
    finally:
        await nc.close()
    assert all("permissions violation" in e.lower() for e in errors), errors
    # Nothing deleted, purged or added: first and last seq, count and bytes as before.
    assert {pod.name: stream_state(pod) for pod in release.nats.values()} == before

    forged = token("mallory", read=["*"], send=["*"])  # the tests' key: a valid token
    tampered = forged[:-4] + ("AAAA" if not forged.endswith("AAAA") else "BBBB")
    assert release.archiver is not None
    for base in (*release.serving(), f"{release.archiver.url}"):
        url = f"{base}/messages" + ("" if base in release.serving() else "/default-channel")
        assert http("GET", url, token=None)[0] == 401
        assert http("GET", url, token=tampered)[0] == 401
    assert http("POST", f"{release.serving()[0]}/messages", {"text": "x"}, token=tampered)[0] == 401


def test_the_archiver_target_runs_the_archiver_by_default(release: Release) -> None:
    """The archiver image, with the chart's pod settings but no command: its CMD."""
    workload = copy.deepcopy(release.workload("Deployment", "archiver"))
    del workload["spec"]["template"]["spec"]["containers"][0]["command"]
    pod = release.cluster.start(workload, f"{RELEASE}-archiver-image", image=ARCHIVER_IMAGE)
    wait_ready([pod], 60)
    try:
        status, body = http("GET", f"{pod.url}/messages/{random.choice(CHANNELS)}")
        assert status == 200 and "messages" in body, body
    finally:
        release.cluster.stop(pod)


def test_a_wrong_password_fails_the_job_naming_the_refusal(release: Release) -> None:
    """The ensure-stream Job's pod with a password NATS does not know: it fails at once
    (not after its 300 s deadline of retrying), and its output names the refusal."""
    job = copy.deepcopy(release.workload("Job", "ensure-stream-1"))
    box = job["spec"]["template"]["spec"]["containers"][0]
    wrong = {"name": "NATS_PASSWORD", "value": "not-the-password"}
    box["env"] = [wrong if e["name"] == wrong["name"] else e for e in box["env"]]
    assert box["command"][-2:] == ["--timeout", "300"]
    code, output = release.cluster.finish_job(release.cluster.start_job(job), timeout=120)
    print(output[-600:])
    assert code == 1, output
    assert "refused the credentials" in output and "Authorization Violation" in output, output
    assert "gave up" not in output, output
