"""The Helm chart, rendered by the real helm: every manifest is valid Kubernetes, and the
chart agrees with the code (env var names, values the services accept, ports, probe paths,
commands, NATS addresses). Runs in ``nox -s chart``, which builds helm."""

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

import options
from archiver.app import create_app as create_archiver
from archiver.settings import ArchiverSettings
from chat.app import create_app as create_node
from chat.settings import NodeSettings
from chat_cluster import cli
from chat_cluster.settings import EnsureSettings
from chatlog.settings import nats_urls
from tests.deploy.chart import (
    KUBERNETES,
    NAMESPACE,
    RELEASE,
    VALUES,
    Manifest,
    container,
    env_of,
    one,
    port_named,
    render,
)
from tests.support import ROOT

pytestmark = pytest.mark.chart

OLDEST = "1.27.0"
"""The oldest Kubernetes Chart.yaml admits."""


@pytest.fixture(scope="module", params=sorted(VALUES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render(VALUES[request.param])


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
def test_every_manifest_is_valid_kubernetes(
    rendered: tuple[str, list[Manifest]], kubernetes: str
) -> None:
    name, _ = rendered
    manifests = render(VALUES[name], kubernetes)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
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
    rendered: tuple[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, manifests = rendered
    deployment = one(manifests, "Deployment", f"{RELEASE}-chat")
    chat = container(deployment)
    env = env_of(chat)
    assert set(ours(env)) <= options.env_names(NodeSettings), name
    assert_otel(env, name, "chat-node")
    assert {"NATS_URL", "NODE_ID", "PORT", "HOST", "STREAM_REPLICAS"} <= set(env)

    args = parse(chat["command"], env, monkeypatch)
    assert args.command == "node"
    settings = cli.node_settings(args, env)  # every value the chart sets is accepted
    assert settings.node_id == "rel-chat-0"
    assert settings.port == port_named(chat, "http")
    assert "KEEP_PER_CHANNEL" in env and (settings.keep_per_channel is None) == (
        env["KEEP_PER_CHANNEL"] == "0"
    )

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
    rendered: tuple[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, manifests = rendered
    archiver = container(one(manifests, "Deployment", f"{RELEASE}-archiver"))
    env = env_of(archiver)
    assert set(ours(env)) <= options.env_names(ArchiverSettings), name
    assert_otel(env, name, "archiver")
    args = parse(archiver["command"], env, monkeypatch)
    settings = options.build(ArchiverSettings, args, env)
    assert settings.port == port_named(archiver, "http")
    served = {route.path for route in create_archiver(settings).routes}
    assert archiver["readinessProbe"]["httpGet"]["path"] in served
    assert archiver["livenessProbe"]["httpGet"]["path"] in served

    jobs = [m for m in manifests if m["kind"] == "Job"]
    if name == "minimal":
        assert not jobs
        return
    job = container(jobs[0])
    job_env = env_of(job)
    assert set(job_env) <= options.env_names(EnsureSettings)
    args = parse(job["command"], job_env, monkeypatch)
    assert args.command == "ensure-stream"
    spec = options.build(EnsureSettings, args, job_env).stream
    assert spec.replicas == int(job_env["STREAM_REPLICAS"])


def test_services_reach_nats_where_the_chart_runs_it(
    rendered: tuple[str, list[Manifest]],
) -> None:
    name, manifests = rendered
    nats = one(manifests, "StatefulSet", f"{RELEASE}-nats")
    replicas = nats["spec"]["replicas"]
    headless = one(manifests, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    server = container(nats)
    client_port = port_named(server, "client")
    expected = [
        f"nats://{RELEASE}-nats-{i}.{headless['metadata']['name']}.{NAMESPACE}.svc:{client_port}"
        for i in range(replicas)
    ]
    for kind, workload in (("Deployment", "chat"), ("Deployment", "archiver")):
        env = env_of(container(one(manifests, kind, f"{RELEASE}-{workload}")))
        assert nats_urls(env["NATS_URL"]) == tuple(expected), (name, workload)
        # The stream needs a quorum of its replicas among the servers the chart runs.
        assert int(env["STREAM_REPLICAS"]) <= replicas

    conf = one(manifests, "ConfigMap", f"{RELEASE}-nats-config")["data"]["nats.conf"]
    assert re.search(r"^\s*sync_interval: always$", conf, re.M), "acks must mean fsynced"
    routes = re.findall(r"nats://(\S+):(\d+)", conf)
    cluster_port = port_named(server, "cluster")
    assert sorted(routes) == sorted(
        (f"{RELEASE}-nats-{i}.{headless['metadata']['name']}.{NAMESPACE}.svc", str(cluster_port))
        for i in range(replicas)
    )
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert re.search(rf"store_dir: {re.escape(mounts['data'])}$", conf, re.M)
    pid_file = re.search(r"pid_file: (\S+)", conf)
    assert pid_file and Path(pid_file[1]).parent == Path(mounts["pid"])
    assert server["lifecycle"]["preStop"]["exec"]["command"] == [
        "nats-server",
        "--signal",
        f"ldm={pid_file[1]}",
    ]
    assert f"http_port: {port_named(server, 'monitor')}" in conf
    assert f"port: {client_port}" in conf


def test_ingress_routes_to_services_that_exist(rendered: tuple[str, list[Manifest]]) -> None:
    name, manifests = rendered
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


def test_the_real_nats_server_accepts_the_rendered_config(
    rendered: tuple[str, list[Manifest]], nats_bin: Path, tmp_path: Path
) -> None:
    name, manifests = rendered
    conf = tmp_path / "nats.conf"
    conf.write_text(one(manifests, "ConfigMap", f"{RELEASE}-nats-config")["data"]["nats.conf"])
    out = subprocess.run(
        [str(nats_bin), "-c", str(conf), "-t"],
        env={"SERVER_NAME": f"{RELEASE}-nats-0"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, (name, out.stderr)
    assert "is valid" in out.stderr + out.stdout


def test_our_containers_run_read_only_with_a_writable_tmp(
    rendered: tuple[str, list[Manifest]],
) -> None:
    name, manifests = rendered
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
