"""The chart's NATS, run: one real nats-server per pod of the StatefulSet, each with the
chart's nats.conf and the auth.conf and routes.conf of its Secret as the pod mounts them,
and the pod's environment (every password from the credentials Secret, the routes the
kubelet composes from ROUTE_PASSWORD). Only what cannot be the same on one machine is
moved: the listen addresses (to free ports on 127.0.0.1), the routes' host names, the
store and the pid file. Against it: the servers form a cluster only with the route
password, only the chart's users get in and each only with its own password, the
chart's ensure-stream Job makes the streams within one server's store, and a chat node
and the archiver run with the chart's environment (over TLS with all-options)."""

import asyncio
import contextlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client

from chat_cluster.processes import free_port
from chatlog import StreamSpec
from chatlog.roles import ADMIN, ARCHIVER, NODE, ROLES
from tests.deploy.chart import (
    NAMESPACE,
    RELEASE,
    VALUES,
    ChartNode,
    ChartProcess,
    Manifest,
    container,
    env_of,
    given,
    localize,
    materialize,
    nats_pod,
    one,
    password,
    port_named,
    render,
    secrets_of,
    values_of,
)
from tests.support import ROOT, nats_cli, wait_until

pytestmark = pytest.mark.chart


@dataclass
class Server:
    name: str
    conf: Path
    env: dict[str, str]
    client: int
    cluster: int
    monitor: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    def start(self, binary: Path) -> None:
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(binary), "-c", str(self.conf)],
            env=self.env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.monitor}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def peers(self) -> set[str]:
        """The servers this one has routes to (a pool of connections to each)."""
        return {r.get("remote_name", "") for r in self.get("/routez").get("routes") or []}

    def healthy(self) -> bool:
        return bool(self.get("/healthz").get("status") == "ok")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._out is not None:
            self._out.close()


@dataclass
class ChartNats:
    values: str
    manifests: list[Manifest]
    secrets: dict[str, dict[str, str]]
    servers: list[Server]
    root: Path
    started: list[ChartProcess] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        scheme = "tls" if self.tls else "nats"
        return [f"{scheme}://127.0.0.1:{s.client}" for s in self.servers]

    @property
    def tls(self) -> bool:
        return "NATS_TLS_CA" in env_of(self.client_box("chat"), self.secrets)

    def client_box(self, name: str) -> Manifest:
        return container(one(self.manifests, "Deployment", f"{RELEASE}-{name}"))

    def passwords(self) -> dict[str, str]:
        ref = next(e for e in self.client_box("chat")["env"] if e["name"] == "NATS_PASSWORD")
        return self.secrets[ref["valueFrom"]["secretKeyRef"]["name"]]

    def local_env(self, manifest: Manifest, name: str) -> dict[str, str]:
        """A workload's env with its mounts written here and NATS_URL pointing at the
        servers run here."""
        mounted = materialize(manifest, self.manifests, self.secrets, self.root / name)
        env = {
            k: localize(v, mounted) for k, v in env_of(container(manifest), self.secrets).items()
        }
        env["NATS_URL"] = ",".join(self.urls)
        return env


def _server(
    manifests: list[Manifest], secrets: dict[str, dict[str, str]], root: Path, index: int
) -> Server:
    statefulset = one(manifests, "StatefulSet", f"{RELEASE}-nats")
    box = container(statefulset)
    pod = nats_pod(manifests, secrets, root / f"pod-{index}", index)
    ports = {name: port_named(box, name) for name in ("client", "cluster", "monitor")}
    client, cluster, monitor = free_port(), free_port(), free_port()
    text = pod.conf.read_text()
    # Where it listens: the same ports on the pod's IP there, free ones on loopback here.
    for pattern, replacement in (
        (rf"^(\s*)port: {ports['client']}$", rf"\1listen: 127.0.0.1:{client}"),
        (rf"^(\s*)http_port: {ports['monitor']}$", rf"\1http: 127.0.0.1:{monitor}"),
        (rf"^(\s*)port: {ports['cluster']}$", rf"\1listen: 127.0.0.1:{cluster}"),
    ):
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count == 1, (pattern, text)
    pod.conf.write_text(text)
    return Server(
        f"{RELEASE}-nats-{index}",
        pod.conf,
        pod.env,
        client,
        cluster,
        monitor,
        root / f"{index}.log",
    )


def _route_host(index: int, cluster_port: int) -> str:
    return f"{RELEASE}-nats-{index}.{RELEASE}-nats-headless.{NAMESPACE}.svc:{cluster_port}"


@pytest.fixture(scope="module", params=sorted(VALUES))
def chart_nats(
    request: pytest.FixtureRequest, nats_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartNats]:
    values = request.param
    root = tmp_path_factory.mktemp(f"chart-nats-{values}")
    manifests = render(VALUES[values])
    secrets = secrets_of(manifests, given(values))
    statefulset = one(manifests, "StatefulSet", f"{RELEASE}-nats")
    cluster_port = port_named(container(statefulset), "cluster")
    servers = [_server(manifests, secrets, root, i) for i in range(statefulset["spec"]["replicas"])]
    for server in servers:
        # The kubelet resolved ROUTE_URLS with the password; only the hosts move here.
        for i, peer in enumerate(servers):
            host = _route_host(i, cluster_port)
            assert f"@{host}" in server.env["ROUTE_URLS"], server.env["ROUTE_URLS"]
            server.env["ROUTE_URLS"] = server.env["ROUTE_URLS"].replace(
                f"@{host}", f"@127.0.0.1:{peer.cluster}"
            )
    chart = ChartNats(values, manifests, secrets, servers, root)
    try:
        for server in servers:
            server.start(nats_bin)
        for server in servers:
            wait_until(server.healthy, 60, f"{server.name} healthy")
        yield chart
    finally:
        for process in chart.started:
            process.stop(5)
        for server in servers:
            server.stop()


def test_servers_form_a_cluster_only_with_the_route_password(
    chart_nats: ChartNats, nats_bin: Path
) -> None:
    servers = chart_nats.servers
    names = {s.name for s in servers}
    wait_until(
        lambda: all(s.peers() == names - {s.name} for s in servers), 30, "routes to every peer"
    )
    for server in servers:
        assert chart_nats.passwords()["route"] in server.env["ROUTE_URLS"]

    # A server with the chart's config and every client password, but a wrong route
    # password, routes to every member and is turned away by each.
    template = servers[0]
    intruder_dir = chart_nats.root / "intruder"
    shutil.copytree(template.conf.parent, intruder_dir)
    intruder = _server_like(template, intruder_dir, chart_nats.root)
    intruder.env["SERVER_NAME"] = "intruder"
    intruder.env["ROUTE_PASSWORD"] = password()
    intruder.env["ROUTE_URLS"] = template.env["ROUTE_URLS"].replace(
        template.env["ROUTE_PASSWORD"], intruder.env["ROUTE_PASSWORD"]
    )
    seen = [len(s.log_text()) for s in servers]
    try:
        intruder.start(nats_bin)

        def refused_by_all() -> bool:
            return all(
                re.search(r"rid:\d+ - authentication error", s.log_text()[start:])
                for s, start in zip(servers, seen, strict=True)
            )

        wait_until(refused_by_all, 30, "every member to refuse the intruder's route")
        assert intruder.peers() == set()
        for server in servers:
            assert server.peers() == names - {server.name}
            assert "intruder" not in json.dumps(server.get("/routez"))
    finally:
        intruder.stop()


def _server_like(template: Server, directory: Path, root: Path) -> Server:
    conf = directory / template.conf.name
    text = conf.read_text()
    client, monitor, cluster = free_port(), free_port(), free_port()
    text = text.replace(f"listen: 127.0.0.1:{template.client}", f"listen: 127.0.0.1:{client}")
    text = text.replace(f"http: 127.0.0.1:{template.monitor}", f"http: 127.0.0.1:{monitor}")
    text = text.replace(f"listen: 127.0.0.1:{template.cluster}", f"listen: 127.0.0.1:{cluster}")
    store = re.search(r'store_dir: "?([^"\n]+)"?', text)
    assert store is not None
    text = text.replace(store[1], str(directory / "store"))
    pid = re.search(r'pid_file: "?([^"\n]+)"?', text)
    assert pid is not None
    text = text.replace(pid[1], str(directory / "nats.pid"))
    conf.write_text(text)
    return Server(
        "intruder", conf, dict(template.env), client, cluster, monitor, root / "intruder.log"
    )


def context_ca(chart: ChartNats) -> str:
    env = chart.local_env(one(chart.manifests, "Deployment", f"{RELEASE}-chat"), "tls-probe")
    return env["NATS_TLS_CA"]


def _tls_context(chart: ChartNats) -> ssl.SSLContext:
    """What a service builds from the chart's NATS_TLS_* files (chatlog.connection)."""
    env = chart.local_env(one(chart.manifests, "Deployment", f"{RELEASE}-chat"), "tls-probe")
    context = ssl.create_default_context(cafile=env["NATS_TLS_CA"])
    if "NATS_TLS_CERT" in env:
        context.load_cert_chain(env["NATS_TLS_CERT"], env["NATS_TLS_KEY"])
    return context


def hello(
    address: tuple[str, int],
    context: ssl.SSLContext | None,
    user: str | None,
    password: str | None,
) -> tuple[dict[str, Any], str]:
    """The NATS handshake by hand: INFO, TLS if asked, CONNECT with these credentials,
    PING. Returns the INFO and the server's answer: PONG when it let us in, else its
    -ERR (or nothing, when it just closed the connection)."""
    with contextlib.ExitStack() as stack:
        conn: socket.socket = stack.enter_context(socket.create_connection(address, timeout=5))
        reader = stack.enter_context(conn.makefile("rb"))
        info: dict[str, Any] = json.loads(reader.readline().decode().removeprefix("INFO "))
        if context is not None:
            conn = stack.enter_context(context.wrap_socket(conn, server_hostname=address[0]))
            reader = stack.enter_context(conn.makefile("rb"))
        connect: dict[str, Any] = {"verbose": False, "pedantic": False, "protocol": 1}
        if user is not None:
            connect |= {"user": user, "pass": password}
        try:
            conn.sendall(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
            answer = reader.readline().decode().strip()
        except OSError as exc:
            answer = f"-ERR {exc!r}"
        return info, answer


async def test_only_the_charts_users_get_in_each_with_its_own_password(
    chart_nats: ChartNats,
) -> None:
    server = chart_nats.servers[0]
    context = _tls_context(chart_nats) if chart_nats.tls else None
    passwords = chart_nats.passwords()

    def answer(user: str | None, password: str | None) -> str:
        return hello(("127.0.0.1", server.client), context, user, password)[1]

    assert "Authorization Violation" in answer(None, None)  # no anonymous access
    for role in ROLES:
        assert answer(role, passwords[role]) == "PONG", role
        # another role's password, or the route's, lets no one in as this role
        for other in (*ROLES, "route"):
            if other != role:
                assert "Authorization Violation" in answer(role, passwords[other]), (role, other)
    assert "Authorization Violation" in answer("route", passwords["route"])
    if chart_nats.tls:
        # TLS is required: the right user and password over plain TCP get nowhere
        info, plain = hello(("127.0.0.1", server.client), None, NODE, passwords[NODE])
        assert info["tls_required"] is True
        assert plain != "PONG", plain
        assert context is not None
        if values_of(chart_nats.values)["nats"]["tls"]["verifyClients"]:
            # ...and a client certificate signed by the chart's CA
            ca_only = ssl.create_default_context(cafile=context_ca(chart_nats))
            assert hello(("127.0.0.1", server.client), ca_only, NODE, passwords[NODE])[1] != "PONG"


async def _ensure_streams(chart: ChartNats) -> dict[str, str]:
    """Run the chart's ensure-stream Job (its command and env, as admin), or without the
    Job what deploy/helm/README.md tells the operator to run; returns its env."""
    jobs = [m for m in chart.manifests if m["kind"] == "Job"]
    if jobs:
        env = chart.local_env(jobs[0], "job")
        command = container(jobs[0])["command"]
    else:
        env = {
            "NATS_URL": ",".join(chart.urls),
            "NATS_USER": ADMIN,
            "NATS_PASSWORD": chart.passwords()[ADMIN],
            "STREAM_REPLICAS": str(values_of(chart.values)["stream"]["replicas"]),
        }
        command = ["chat-cluster", "ensure-stream", "--timeout", "60"]
    job = ChartProcess("ensure-stream", command, env, chart.root)
    chart.started.append(job)
    job.start()
    assert job.proc is not None
    code = await asyncio.to_thread(job.proc.wait, 120)
    assert code == 0, job.log_text()
    return env


async def _admin(chart: ChartNats) -> Client:
    return await nats.connect(
        chart.urls,
        user=ADMIN,
        password=chart.passwords()[ADMIN],
        tls=_tls_context(chart) if chart.tls else None,
        connect_timeout=2,
    )


async def test_the_job_makes_the_streams_and_the_services_run_with_the_charts_env(
    chart_nats: ChartNats,
) -> None:
    env = await _ensure_streams(chart_nats)
    root = chart_nats.root

    # The limits ensure-stream chose from the chart's account: one copy of the log and
    # of the snapshots fits one server's store.
    nc = await _admin(chart_nats)
    try:
        js = nc.jetstream()
        log = (await js.stream_info("CHAT")).config
        snapshots = (await js.stream_info("CHAT_SNAPSHOTS")).config
        account = await js.account_info()
    finally:
        await nc.close()
    per_server = int(chart_nats.servers[0].get("/varz")["jetstream"]["config"]["max_storage"])
    assert log.num_replicas == int(env["STREAM_REPLICAS"])
    assert account.limits.max_storage == per_server * log.num_replicas
    assert log.max_bytes is not None and snapshots.max_bytes is not None
    assert log.max_bytes + snapshots.max_bytes <= per_server
    if "LOG_MAX_BYTES" in env:
        assert log.max_bytes == int(env["LOG_MAX_BYTES"])
        assert snapshots.max_bytes == int(env["SNAPSHOT_MAX_BYTES"])
    else:
        spec = StreamSpec(replicas=log.num_replicas)
        assert (log.max_bytes, snapshots.max_bytes) == spec.sizes(account.limits.max_storage)

    # A chat node and the archiver, with the chart's command and env (TLS files and all).
    chat = one(chart_nats.manifests, "Deployment", f"{RELEASE}-chat")
    node = ChartNode(
        f"{RELEASE}-chat-0", container(chat)["command"], chart_nats.local_env(chat, "chat"), root
    )
    archiver_manifest = one(chart_nats.manifests, "Deployment", f"{RELEASE}-archiver")
    archiver = ChartProcess(
        "archiver",
        container(archiver_manifest)["command"],
        chart_nats.local_env(archiver_manifest, "archiver"),
        root,
    )
    for process in (node, archiver):
        chart_nats.started.append(process)
        process.start()
    for process in (node, archiver):
        await asyncio.to_thread(wait_until, process.ready, 60, f"{process.name} ready")
    users = {
        conn.get("name"): conn.get("authorized_user")
        for server in chart_nats.servers
        for conn in server.get("/connz?auth=true").get("connections") or []
    }
    assert users.get(f"chat-node {node.name}") == NODE, users
    assert users.get("archiver") == ARCHIVER, users


def in_pod_script(name: str) -> str:
    """A shell snippet that deploy/k3d/smoke.sh runs inside a chat pod (the README
    shows the same), read from the script itself."""
    script = (ROOT / "deploy" / "k3d" / "smoke.sh").read_text()
    found = re.search(rf"^{name}='(.*?)'$", script, re.M | re.S)
    assert found, f"no {name} in smoke.sh"
    return found[1]


async def test_nats_pub_as_the_publisher_the_way_smoke_sh_does_it(
    chart_nats: ChartNats, tmp_path: Path
) -> None:
    """The real nats CLI in the chat pod's environment (NATS_URL, NATS_TLS_* and the
    node's own NATS_USER/NATS_PASSWORD), the publisher password on stdin: stored as a
    raw message. Without credentials, refused."""
    cli = nats_cli()
    if cli is None:
        pytest.skip("the nats CLI is not built here (python3 -m nox -s natscli)")
    await _ensure_streams(chart_nats)  # idempotent: what the Job does on every upgrade
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nats").symlink_to(cli)
    chat = one(chart_nats.manifests, "Deployment", f"{RELEASE}-chat")
    pod = chart_nats.local_env(chat, "pub")
    pod |= {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    text = f"smoke {chart_nats.values}"

    def run(command: list[str], env: dict[str, str], stdin: str = "") -> Any:
        return subprocess.run(
            command, env=env, input=stdin, capture_output=True, text=True, timeout=60
        )

    anonymous = {k: v for k, v in pod.items() if k not in ("NATS_USER", "NATS_PASSWORD")}
    command = ["nats", "pub", "chat.default-channel", f"anonymous {text}"]
    refused = await asyncio.to_thread(run, command, anonymous)
    assert refused.returncode != 0, refused.stdout

    script = ["sh", "-c", in_pod_script("AS_PUBLISHER"), "nats"]
    command = [*script, "pub", "chat.default-channel", text]
    stdin = chart_nats.passwords()["publisher"] + "\n"
    published = await asyncio.to_thread(run, command, pod, stdin)
    assert published.returncode == 0, published.stderr

    nc = await _admin(chart_nats)
    try:
        message = await nc.jetstream().get_last_msg("CHAT", "chat.default-channel.raw")
    finally:
        await nc.close()
    assert message.data is not None and message.data.decode() == text
