"""The Helm chart, rendered by the real helm: every manifest is valid Kubernetes, and the
chart agrees with the code (env var names, values the services accept, ports, probe paths,
commands, NATS addresses). Runs in ``nox -s chart``, which builds helm."""

import dataclasses
import json
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import options
from archiver.app import create_app as create_archiver
from archiver.settings import ArchiverSettings
from chat.app import create_app as create_node
from chat.settings import NodeSettings
from chat_cluster import cli
from chat_cluster.settings import EnsureSettings
from chatlog import StreamSpec
from chatlog.roles import (
    ACCOUNTS,
    ADMIN,
    ARCHIVER,
    LOG_ACCOUNT,
    NODE,
    PUBLISHER,
    ROLES,
    imports,
    permissions,
)
from chatlog.settings import nats_urls
from tests.deploy.chart import (
    KUBERNETES,
    NAMESPACE,
    RELEASE,
    VALUES,
    Manifest,
    Secrets,
    container,
    env_of,
    given,
    localize,
    materialize,
    nats_pod,
    one,
    port_named,
    render,
    secret_keys,
    secrets_of,
    values_of,
)
from tests.support import ROOT

pytestmark = pytest.mark.chart

OLDEST = "1.27.0"
"""The oldest Kubernetes Chart.yaml admits."""


@dataclass(frozen=True)
class Release:
    """The chart rendered with one values file, and the Secrets its pods can read (the
    rendered ones, and stand-ins for those an operator creates)."""

    name: str
    manifests: list[Manifest]
    secrets: Secrets
    values: dict[str, Any]

    def workload(self, kind: str, name: str) -> Manifest:
        return one(self.manifests, kind, f"{RELEASE}-{name}")

    def jobs(self) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == "Job"]

    @property
    def credentials(self) -> str:
        """The Secret with the NATS passwords, as the chat pods name it."""
        chat = container(self.workload("Deployment", "chat"))
        ref = next(e for e in chat["env"] if e["name"] == "NATS_PASSWORD")
        name: str = ref["valueFrom"]["secretKeyRef"]["name"]
        return name


@pytest.fixture(scope="module", params=sorted(VALUES))
def rendered(request: pytest.FixtureRequest) -> Release:
    name = request.param
    manifests = render(VALUES[name])
    return Release(name, manifests, secrets_of(manifests, given(name)), values_of(name))


def pod_env(release: Release, manifest: Manifest, root: Path, pod: str) -> dict[str, str]:
    """The container's environment, its file paths pointed at its volumes written
    under ``root`` as the kubelet would mount them."""
    mounted = materialize(manifest, release.manifests, release.secrets, root)
    env = env_of(container(manifest), release.secrets, pod)
    return {k: localize(v, mounted) for k, v in env.items()}


def size(quantity: str) -> int:
    """A Kubernetes quantity in bytes (the PVC's request)."""
    units = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    units |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(quantity))
    assert match and match[2] in units, quantity
    return int(match[1]) * units[match[2]]


CLIENTS = (("Deployment", "chat", NODE), ("Deployment", "archiver", ARCHIVER))
JOB = ("Job", "ensure-stream-1", ADMIN)  # helm template: revision 1


def ours(env: dict[str, str]) -> dict[str, str]:
    """The variables our config reads; OTEL_* are read by the OpenTelemetry SDK itself."""
    return {k: v for k, v in env.items() if not k.startswith("OTEL_")}


def assert_otel(env: dict[str, str], values: str, service: str) -> None:
    otel = {k: v for k, v in env.items() if k.startswith("OTEL_")}
    if values != "all-options":
        assert otel == {}  # nothing exported unless an endpoint is configured
        return
    assert otel["OTEL_SERVICE_NAME"] == service
    assert otel["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http")
    assert otel["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert 0 < float(otel["OTEL_TRACES_SAMPLER_ARG"]) <= 1


def parse(command: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse a container's command with the real CLI parser and that container's env."""
    assert command[0] == "chat-cluster"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "chat-cluster" in scripts  # the console script the image puts on PATH
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return cli.build_parser().parse_args(command[1:])


@pytest.mark.parametrize("kubernetes", [OLDEST, KUBERNETES])
def test_every_manifest_is_valid_kubernetes(rendered: "Release", kubernetes: str) -> None:
    name = rendered.name
    manifests = render(VALUES[name], kubernetes)
    kinds = {m["kind"] for m in manifests}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
    } <= kinds
    for manifest in manifests:
        if manifest["apiVersion"].startswith("traefik.io/"):
            # A Traefik CRD: not in the Kubernetes schemas; check the one field we use.
            assert manifest["kind"] == "Middleware"
            prefixes = manifest["spec"]["stripPrefix"]["prefixes"]
            assert prefixes and all(p.startswith("/") for p in prefixes)
            continue
        try:
            kubernetes_validate.validate(manifest, kubernetes, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {manifest['kind']}/{manifest['metadata']['name']}: {exc}")


def test_chat_nodes_get_only_settings_the_node_reads(
    rendered: Release, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = rendered.name
    deployment = rendered.workload("Deployment", "chat")
    chat = container(deployment)
    env = pod_env(rendered, deployment, tmp_path, "rel-chat-0")
    # Only what a node reads: the stream's parameters are ensure-stream's alone now.
    assert set(ours(env)) <= options.env_names(NodeSettings), name
    assert_otel(env, name, "chat-node")
    assert {"NATS_URL", "NODE_ID", "PORT", "HOST", "NATS_USER", "NATS_PASSWORD"} <= set(env)

    args = parse(chat["command"], env, monkeypatch)
    assert args.command == "node"
    settings = cli.node_settings(args, env)  # every value the chart sets is accepted
    assert settings.node_id == "rel-chat-0"
    assert settings.port == port_named(chat, "http")
    assert "KEEP_PER_CHANNEL" in env and (settings.keep_per_channel is None) == (
        env["KEEP_PER_CHANNEL"] == "0"
    )
    # the chart's limits are the node's own defaults, which docs/limits.md explains
    defaults = NodeSettings()
    limits = ("connections", "send_rate", "send_burst", "min_seq_waiters", "ws_per_user")
    more = ("join_rate", "history_rate", "ws_send_timeout", "ready_max_lag")
    more += ("presence_interval", "presence_ttl", "workers")
    for field in (*limits, *more):
        expected = getattr(defaults, field)
        if field == "connections":  # behind an ingress all come from its pods: no cap
            expected = dataclasses.replace(expected, max_per_address=0)
        assert getattr(settings, field) == expected, field
    assert {"MAX_CONNECTIONS", "SEND_RATE", "WS_PER_USER", "READY_MAX_LAG"} <= set(env)
    assert {"PRESENCE_INTERVAL", "PRESENCE_TTL", "WORKERS"} <= set(env)
    # who it is to NATS: the node user, with the node password from the Secret
    assert settings.log.user == NODE
    assert settings.log.password == rendered.secrets[rendered.credentials][NODE]
    assert settings.log.creds is None

    # the probes and Prometheus ask for paths the node serves, on the port it listens on
    served = {route.path for route in create_node(settings).routes}
    scrape = deployment["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/path"] in served
    assert int(scrape["prometheus.io/port"]) == settings.port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert chat[probe]["httpGet"] == {"path": path, "port": "http"}
        assert path in served

    # a rollout never drops below the replicas, and SIGTERM gets its grace period
    spec = deployment["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pre_stop = chat["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > settings.grace + int(
        pre_stop[1]
    )


def test_archiver_and_job_get_only_settings_they_read(
    rendered: Release, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = rendered.name
    manifest = rendered.workload("Deployment", "archiver")
    archiver = container(manifest)
    env = pod_env(rendered, manifest, tmp_path / "archiver", "rel-archiver-0")
    assert set(ours(env)) <= options.env_names(ArchiverSettings), name
    assert_otel(env, name, "archiver")
    args = parse(archiver["command"], env, monkeypatch)
    settings = options.build(ArchiverSettings, args, env)
    assert settings.port == port_named(archiver, "http")
    assert settings.connections.header_timeout == ArchiverSettings().connections.header_timeout
    assert settings.connections.max_per_address == 0
    assert (settings.log.user, settings.log.password) == (
        ARCHIVER,
        rendered.secrets[rendered.credentials][ARCHIVER],
    )
    served = {route.path for route in create_archiver(settings).routes}
    assert archiver["readinessProbe"]["httpGet"]["path"] in served
    assert archiver["livenessProbe"]["httpGet"]["path"] in served

    jobs = rendered.jobs()
    if name == "minimal":
        assert not jobs
        return
    job = container(jobs[0])
    job_env = pod_env(rendered, jobs[0], tmp_path / "job", "rel-ensure-stream-x")
    assert set(job_env) <= options.env_names(EnsureSettings)
    args = parse(job["command"], job_env, monkeypatch)
    assert args.command == "ensure-stream"
    ensure = options.build(EnsureSettings, args, job_env)
    assert (ensure.log.user, ensure.log.password) == (
        ADMIN,
        rendered.secrets[rendered.credentials][ADMIN],
    )
    stream = rendered.values["stream"]
    assert ensure.stream.replicas == stream["replicas"]
    assert ensure.stream.max_text == stream["maxTextBytes"]
    assert ensure.stream.duplicate_window == stream["duplicateWindowSeconds"]
    if name == "all-options":  # given as 15Gi and 4294967296: passed on as bytes
        assert (ensure.stream.max_bytes, ensure.stream.snapshot_max_bytes) == (15 * 2**30, 2**32)
    else:  # not given: ensure-stream takes its shares of the account's storage
        assert (ensure.stream.max_bytes, ensure.stream.snapshot_max_bytes) == (0, 0)


def test_services_reach_nats_where_the_chart_runs_it(rendered: Release, tmp_path: Path) -> None:
    name, manifests = rendered.name, rendered.manifests
    nats = rendered.workload("StatefulSet", "nats")
    replicas = nats["spec"]["replicas"]
    headless = one(manifests, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    server = container(nats)
    client_port = port_named(server, "client")
    scheme = "tls" if rendered.values["nats"]["tls"]["enabled"] else "nats"
    hosts = [
        f"{RELEASE}-nats-{i}.{headless['metadata']['name']}.{NAMESPACE}.svc"
        for i in range(replicas)
    ]
    expected = tuple(f"{scheme}://{host}:{client_port}" for host in hosts)
    for kind, workload, _ in (*CLIENTS, JOB):
        if kind == "Job" and not rendered.jobs():
            continue
        env = env_of(container(rendered.workload(kind, workload)), rendered.secrets)
        assert nats_urls(env["NATS_URL"]) == expected, (name, workload)
    # The streams need a quorum of their replicas among the servers the chart runs.
    assert rendered.values["stream"]["replicas"] <= replicas

    pod = nats_pod(rendered.manifests, rendered.secrets, tmp_path)
    conf = pod.load()
    assert conf["jetstream"]["sync_interval"] == "always", "acks must mean fsynced"
    # Routes to every server, each carrying the route user's password (filled in by the
    # kubelet from the Secret), which the servers require of each other.
    route_password = rendered.secrets[rendered.credentials]["route"]
    cluster_port = port_named(server, "cluster")
    assert conf["cluster"]["port"] == cluster_port
    assert conf["cluster"]["authorization"] == {"user": "route", "password": route_password}
    assert sorted(conf["cluster"]["routes"]) == sorted(
        f"nats-route://route:{route_password}@{host}:{cluster_port}" for host in hosts
    )
    assert conf["server_name"] == f"{RELEASE}-nats-0"
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert conf["jetstream"]["store_dir"] == str(pod.mounted[mounts["data"]])
    pid_file = Path(conf["pid_file"])
    assert pid_file.parent == pod.mounted[mounts["pid"]]
    assert server["lifecycle"]["preStop"]["exec"]["command"] == [
        "nats-server",
        "--signal",
        f"ldm={mounts['pid']}/{pid_file.name}",
    ]
    assert conf["http_port"] == port_named(server, "monitor")
    assert conf["port"] == client_port


def expected_permissions(role: str) -> dict[str, Any] | None:
    """``chatlog.roles.permissions(role)`` the way nats-server's config says it."""
    granted = permissions(role)
    if granted is None:
        return None
    subscribe = {"allow": list(granted.subscribe)} if granted.subscribe else {"deny": [">"]}
    return {"publish": {"allow": list(granted.publish)}, "subscribe": subscribe}


def canonical(items: list[Any]) -> list[str]:
    """A list of config maps, order aside, duplicates kept."""
    return sorted(json.dumps(item, sort_keys=True) for item in items)


def test_nats_users_have_exactly_the_roles_accounts_and_permissions(
    rendered: Release, tmp_path: Path
) -> None:
    """The chart's copy of chatlog.roles, as the servers read it: one user per role, in
    the role's account, its password the role's key of the credentials Secret, its
    permissions exactly the role's; each account imports exactly what the role needs
    and the log's account exports exactly that, to that account only. Nobody else: no
    anonymous user, no other account, user or authorization."""
    conf = nats_pod(rendered.manifests, rendered.secrets, tmp_path).load()
    assert "no_auth_user" not in conf
    assert "authorization" not in conf  # users only in accounts, with permissions
    assert set(conf["accounts"]) == set(ACCOUNTS.values())
    passwords = rendered.secrets[rendered.credentials]
    found: dict[str, str] = {}
    for name, account in conf["accounts"].items():
        assert "no_auth_user" not in account, name
        assert ("jetstream" in account) == (name == LOG_ACCOUNT), name  # streams: CHAT only
        for user in account["users"]:
            role = user["user"]
            assert role not in found, f"{role} in {found[role]} and {name}"
            found[role] = name
            assert user["password"] == passwords[role] != "", role
            want = expected_permissions(role)
            if want is None:  # admin: everything
                assert set(user) == {"user", "password"}, role
                continue
            got = user["permissions"]
            assert set(got) == set(want), role
            for kind in ("publish", "subscribe"):
                assert set(got[kind]) == set(want[kind]), (role, kind)
                for rule, subjects in want[kind].items():
                    assert sorted(got[kind][rule]) == sorted(subjects), (role, kind, rule)
        wanted_imports = [
            {"service": {"account": LOG_ACCOUNT, "subject": i.subject}, "to": i.to}
            for role, home in ACCOUNTS.items()
            if home == name
            for i in imports(role)
        ]
        assert canonical(account.get("imports", [])) == canonical(wanted_imports), name
    assert found == ACCOUNTS
    exports = []
    for role, home in ACCOUNTS.items():
        for i in imports(role):
            response = {"response": "stream"} if i.stream_response else {}
            exports.append({"service": i.subject, "accounts": [home], **response})
    for name, account in conf["accounts"].items():
        wanted = exports if name == LOG_ACCOUNT else []
        assert canonical(account.get("exports", [])) == canonical(wanted), name
    # distinct passwords: no role can pass for another
    assert len({passwords[key] for key in (*ROLES, "route")}) == len(ROLES) + 1


def test_no_workload_gets_another_roles_password(rendered: Release) -> None:
    manifests, credentials = rendered.manifests, rendered.credentials
    tls = rendered.values["nats"]["tls"]
    readers: dict[str, set[str]] = {}
    for manifest in manifests:
        if manifest["kind"] not in ("Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"):
            continue
        keys = secret_keys(manifest)
        assert (credentials, "*") not in keys, manifest["metadata"]["name"]
        readers[manifest["metadata"]["name"]] = {k for s, k in keys if s == credentials}
        if tls["enabled"] and manifest["kind"] != "StatefulSet":
            # clients get the CA of the servers' Secret, never the servers' key
            assert {k for s, k in keys if s == tls["secretName"]} == {"ca.crt"}
    expected = {f"{RELEASE}-{name}": {role} for _, name, role in CLIENTS}
    if rendered.jobs():
        expected[f"{RELEASE}-{JOB[1]}"] = {JOB[2]}
    # The servers check every password (and use the route one among themselves).
    expected[f"{RELEASE}-nats"] = {*ROLES, "route"}
    assert readers == expected
    assert PUBLISHER not in set().union(*(v for k, v in readers.items() if k != f"{RELEASE}-nats"))

    # No password in anything but a Secret: not in a ConfigMap, a command or an env value.
    text = yaml.safe_dump([m for m in manifests if m["kind"] != "Secret"])
    for key, value in rendered.secrets[credentials].items():
        assert value not in text, key
    conf = one(manifests, "ConfigMap", f"{RELEASE}-nats-config")["data"]["nats.conf"]
    settings = re.sub(r"#.*", "", conf)  # what it says, not its comments
    for key in ("password", "users", "accounts", "authorization", "routes"):
        # the auth configuration is in the Secret
        assert not re.search(rf"\b{key}\s*[:={{\[]", settings), key


def test_generated_passwords_are_strong_and_only_made_without_an_existing_secret(
    rendered: Release,
) -> None:
    existing = rendered.values["nats"]["auth"]["existingSecret"]
    made = [
        m
        for m in rendered.manifests
        if m["kind"] == "Secret" and m["metadata"]["name"] == f"{RELEASE}-nats-credentials"
    ]
    if existing:
        assert rendered.credentials == existing
        assert not made  # the operator's Secret is used, none is made
        return
    assert rendered.credentials == f"{RELEASE}-nats-credentials" and len(made) == 1
    passwords = rendered.secrets[rendered.credentials]
    assert set(passwords) == {*ROLES, "route"}
    for key, value in passwords.items():
        # read by nats-server as config values: a letter first, letters and digits
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{31}", value), key
    again = secrets_of(render(VALUES[rendered.name]))[rendered.credentials]
    assert again != passwords  # random at each install (helm template: no cluster to look up)


def test_storage_limits_are_bytes_and_every_copy_fits_one_server(
    rendered: Release, tmp_path: Path
) -> None:
    pod = nats_pod(rendered.manifests, rendered.secrets, tmp_path)
    conf = pod.load()
    raw = pod.conf.read_text()
    # bytes, not units: nats-server and the services read "GB" differently
    assert re.search(r"^\s*max_file_store: \d+$", raw, re.M), raw
    assert re.search(r"^\s*max_memory_store: \d+$", raw, re.M), raw
    nats = rendered.values["nats"]
    per_server = conf["jetstream"]["max_file_store"]
    assert per_server == size(nats["maxFileStore"])
    assert conf["jetstream"]["max_memory_store"] == size(nats["maxMemoryStore"])
    statefulset = rendered.workload("StatefulSet", "nats")
    claim = statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
    assert 2 * per_server <= size(claim["storage"])  # room for the Raft log as much again

    # JetStream counts every replica against the account: it holds one server's store
    # per replica of the streams, and ensure-stream's shares of it put at most one
    # copy of the log and of the snapshots on each server, within its store.
    replicas = rendered.values["stream"]["replicas"]
    limits = conf["accounts"][LOG_ACCOUNT]["jetstream"]
    assert limits["max_file"] == per_server * min(replicas, nats["replicas"])
    assert limits["max_mem"] == size(nats["maxMemoryStore"]) * nats["replicas"]
    stream = rendered.values["stream"]
    spec = StreamSpec(
        replicas=replicas,
        max_bytes=size(stream["logMaxBytes"]) if stream["logMaxBytes"] else 0,
        snapshot_max_bytes=size(stream["snapshotMaxBytes"]) if stream["snapshotMaxBytes"] else 0,
    )
    log_bytes, snapshot_bytes = spec.sizes(limits["max_file"])
    assert log_bytes + snapshot_bytes <= per_server
    if not stream["logMaxBytes"]:
        assert log_bytes + snapshot_bytes >= 0.9 * per_server  # and uses it


def test_monitoring_is_on_no_service(rendered: Release) -> None:
    server = container(rendered.workload("StatefulSet", "nats"))
    monitor = port_named(server, "monitor")
    for service in (m for m in rendered.manifests if m["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            assert port["port"] != monitor, service["metadata"]["name"]
            assert port.get("targetPort") not in ("monitor", monitor), service["metadata"]["name"]
    # ...while the probes still reach it on the pod's IP
    for probe in ("startupProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["port"] == "monitor"
    # Liveness is the process answering, not JetStream's health: restarting servers whose
    # JetStream a full disk disabled deletes the stream (docs/full-disk.md).
    assert (
        server["livenessProbe"]
        == {
            **server["livenessProbe"],
            "tcpSocket": {"port": "client"},
        }
        and "httpGet" not in server["livenessProbe"]
    )


def test_tls_between_services_and_nats_is_an_option(rendered: Release, tmp_path: Path) -> None:
    tls = rendered.values["nats"]["tls"]
    conf = nats_pod(rendered.manifests, rendered.secrets, tmp_path / "nats").load()
    clients = [*CLIENTS, JOB] if rendered.jobs() else list(CLIENTS)
    envs = {
        name: pod_env(rendered, rendered.workload(kind, name), tmp_path / name, "pod-0")
        for kind, name, _ in clients
    }
    if not tls["enabled"]:
        assert "tls" not in conf
        for env in envs.values():
            assert not {k for k in env if k.startswith("NATS_TLS_")}
            assert all(url.startswith("nats://") for url in nats_urls(env["NATS_URL"]))
        return
    served = rendered.secrets[tls["secretName"]]
    block = conf["tls"]
    # the servers present the Secret's certificate and key (and know its CA)
    assert Path(block["cert_file"]).read_text() == served["tls.crt"]
    assert Path(block["key_file"]).read_text() == served["tls.key"]
    assert Path(block["ca_file"]).read_text() == served["ca.crt"]
    assert block.get("verify", False) == tls["verifyClients"]
    for name, env in envs.items():
        assert all(url.startswith("tls://") for url in nats_urls(env["NATS_URL"])), name
        assert Path(env["NATS_TLS_CA"]).read_text() == served["ca.crt"], name
        if tls["verifyClients"]:
            client = rendered.secrets[tls["clientSecretName"]]
            assert Path(env["NATS_TLS_CERT"]).read_text() == client["tls.crt"], name
            assert Path(env["NATS_TLS_KEY"]).read_text() == client["tls.key"], name


def test_the_real_nats_server_accepts_the_rendered_config(
    rendered: Release, nats_bin: Path, tmp_path: Path
) -> None:
    """``nats-server -t``: nats.conf with the Secret's auth.conf and routes.conf beside
    it, as the pod mounts them, and the pod's environment (passwords, routes)."""
    statefulset = rendered.workload("StatefulSet", "nats")
    for index in range(statefulset["spec"]["replicas"]):
        pod = nats_pod(rendered.manifests, rendered.secrets, tmp_path / str(index), index)
        out = subprocess.run(
            [str(nats_bin), "-t", "-c", str(pod.conf)],
            env=pod.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, (rendered.name, out.stderr)
        assert "is valid" in out.stderr + out.stdout


def test_ingress_routes_to_services_that_exist(rendered: "Release") -> None:
    name, manifests = rendered.name, rendered.manifests
    ingresses = [m for m in manifests if m["kind"] == "Ingress"]
    if name == "minimal":
        assert not ingresses
        return
    services = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}
    middlewares = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Middleware"}
    paths = set()
    for ingress in ingresses:
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                port_names = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in port_names
                paths.add(path["path"])
                # the middleware named in the annotation exists and strips this prefix
                ref = ingress["metadata"]["annotations"][
                    "traefik.ingress.kubernetes.io/router.middlewares"
                ]
                namespace_and_name = ref.removesuffix("@kubernetescrd")
                middleware = namespace_and_name.removeprefix(f"{NAMESPACE}-")
                assert middlewares[middleware]["spec"]["stripPrefix"]["prefixes"] == [path["path"]]
    assert paths == {"/chat", "/archiver"}


def test_the_stream_job_is_applied_with_the_release_not_after_it(rendered: Release) -> None:
    """`helm install --wait` runs post-install hooks only once the Deployments are ready,
    and chat pods are ready only once this Job has made the streams: as a hook, the
    install would wait out its timeout (tests/images found it). One Job per revision,
    since a Job's pod template cannot change on upgrade."""
    for job in rendered.jobs():
        assert "helm.sh/hook" not in job["metadata"].get("annotations", {}), job["metadata"]
        assert job["metadata"]["name"] == f"{RELEASE}-ensure-stream-1"  # revision 1
        assert job["spec"]["ttlSecondsAfterFinished"] > 0
    hooked = [
        m for m in rendered.manifests if "helm.sh/hook" in m["metadata"].get("annotations", {})
    ]
    assert hooked == []


def test_our_containers_run_read_only_with_a_writable_tmp(
    rendered: "Release",
) -> None:
    name, manifests = rendered.name, rendered.manifests
    ours = [m for m in manifests if m["kind"] in ("Deployment", "Job")]
    assert len(ours) == (2 if name == "minimal" else 3)
    for manifest in ours:
        pod = manifest["spec"]["template"]["spec"]
        box = container(manifest)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert box["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in box["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]  # the image's HOME (deploy/Dockerfile)


def test_the_image_runs_as_the_user_and_group_the_chart_asks_for(rendered: Release) -> None:
    deployment = rendered.workload("Deployment", "chat")
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    # useradd --system alone gives the user a system group (gid 999 in a bookworm base),
    # and the pod's runAsGroup would then name a group the image does not have.
    assert f"--gid {pod['runAsGroup']}" in dockerfile
    assert f"--uid {pod['runAsUser']}" in dockerfile
    assert f"USER {pod['runAsUser']}:{pod['runAsGroup']}" in dockerfile


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything out, then only what the Dockerfile COPYs back in
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    copied = {
        source.split("/")[0]
        for line in dockerfile
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    }
    assert copied and copied <= allowed, (copied, allowed)
    assert "services/*.egg-info/" in ignore  # a stale egg-info would land in the image
