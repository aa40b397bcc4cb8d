"""Render the Helm chart with the real helm binary, look things up in the manifests, and
start processes the way its pods start them."""

import base64
import functools
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chat_cluster.credentials import NatsUser
from chat_cluster.local import Service
from chat_cluster.processes import free_port
from chatlog.roles import ROLES
from tests.deploy import natsconf
from tests.deploy.certs import Ca
from tests.support import JWKS_FILE, ROOT

CHART = ROOT / "deploy" / "helm" / "chat-cluster"
VALUES = {
    "default": None,
    "all-options": CHART / "ci" / "all-options.yaml",
    "minimal": CHART / "ci" / "minimal.yaml",
}
RELEASE = "rel"
NAMESPACE = "chat"

Manifest = dict[str, Any]


def helm() -> str:
    found = os.environ.get("HELM") or shutil.which("helm")
    if not found:
        raise AssertionError(
            "helm is not installed: run `python3 -m nox -s chart`, which builds it"
        )
    return found


KUBERNETES = "1.37.0"
"""The newest Kubernetes kubernetes-validate knows (helm built from source assumes 1.20)."""


JWKS_SECRET = "chat-jwks"
"""The JWKS Secret the default render names (an operator's, like the chart's others)."""


def render(values: Path | None = None, kubernetes: str = KUBERNETES) -> list[Manifest]:
    args = [helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", kubernetes]
    if values is not None:
        args += ["-f", str(values)]
    else:  # the defaults, and the one value the chart cannot default: a token key source
        args += ["--set", f"auth.jwksSecret={JWKS_SECRET}"]
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(manifest: Manifest) -> Manifest:
    spec = manifest["spec"]["template"]["spec"]
    containers = spec["containers"]
    assert len(containers) == 1
    result: Manifest = containers[0]
    return result


Secrets = Mapping[str, Mapping[str, str]]
"""Secret name -> key -> the decoded value, as a pod would read it."""


def secrets_of(
    manifests: list[Manifest], given: Secrets | None = None
) -> dict[str, dict[str, str]]:
    """Every Secret a pod of this release can read: the rendered ones, decoded, and the
    ``given`` ones that an operator creates (``nats.auth.existingSecret``, TLS)."""
    found: dict[str, dict[str, str]] = {k: dict(v) for k, v in (given or {}).items()}
    for manifest in manifests:
        if manifest["kind"] != "Secret":
            continue
        data = {k: base64.b64decode(v).decode() for k, v in manifest.get("data", {}).items()}
        data.update(manifest.get("stringData", {}))
        found[manifest["metadata"]["name"]] = data
    return found


_DEPENDENT = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def env_of(container: Manifest, secrets: Secrets, pod_name: str = "rel-chat-0") -> dict[str, str]:
    """The container's environment as the process sees it: the downward API filled in,
    secretKeyRef read from ``secrets`` (a missing Secret or key fails, as the kubelet
    would refuse to start the container), and ``$(VAR)`` references to variables listed
    before expanded as the kubelet expands them."""
    env: dict[str, str] = {}

    def expand(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = _DEPENDENT.sub(expand, item["value"])
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", item
            env[name] = pod_name
        else:
            ref = source["secretKeyRef"]
            assert ref["name"] in secrets, f"{name}: no Secret {ref['name']!r}"
            assert ref["key"] in secrets[ref["name"]], (
                f"{name}: {ref['name']} has no {ref['key']!r}"
            )
            env[name] = secrets[ref["name"]][ref["key"]]
    return env


def pod_spec(manifest: Manifest) -> Manifest:
    spec: Manifest = manifest["spec"]["template"]["spec"]
    return spec


def secret_keys(manifest: Manifest) -> set[tuple[str, str]]:
    """Every (Secret, key) a workload's pods can read, through env or volumes; "*" for
    every key of a Secret mounted or imported whole."""
    pod = pod_spec(manifest)
    keys: set[tuple[str, str]] = set()
    for box in pod.get("initContainers", []) + pod["containers"]:
        for item in box.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                keys.add((ref["name"], ref["key"]))
        for source in box.get("envFrom", []):
            if "secretRef" in source:
                keys.add((source["secretRef"]["name"], "*"))
    for volume in pod.get("volumes", []):
        sources = [volume] if "secret" in volume else volume.get("projected", {}).get("sources", [])
        for source in sources:
            secret = source.get("secret")
            if secret is None:
                continue
            name = secret.get("secretName") or secret["name"]
            items = secret.get("items")
            keys |= {(name, i["key"]) for i in items} if items else {(name, "*")}
    return keys


def materialize(
    manifest: Manifest, manifests: list[Manifest], secrets: Secrets, root: Path
) -> dict[str, Path]:
    """Write what the kubelet would mount into the workload's container (ConfigMaps,
    Secrets, projected volumes, emptyDirs) under ``root``; returns mountPath -> where it
    is here. A volume that names a missing ConfigMap, Secret or key fails."""
    maps = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod_spec(manifest)["volumes"]}
    claims = {c["metadata"]["name"] for c in manifest["spec"].get("volumeClaimTemplates", [])}
    mounted: dict[str, Path] = {}
    for mount in container(manifest)["volumeMounts"]:
        here = root / mount["mountPath"].lstrip("/")
        here.mkdir(parents=True, exist_ok=True)
        mounted[mount["mountPath"]] = here
        volume = volumes.get(mount["name"])
        if volume is None:
            assert mount["name"] in claims, f"no volume {mount['name']!r}"
            continue
        if "emptyDir" in volume:
            continue
        sources = volume["projected"]["sources"] if "projected" in volume else [volume]
        for source in sources:
            if "configMap" in source:
                data = maps[source["configMap"]["name"]]
                items = source["configMap"].get("items")
            else:
                secret = source["secret"]
                name = secret.get("secretName") or secret["name"]
                assert name in secrets, f"volume {mount['name']}: no Secret {name!r}"
                data = secrets[name]
                items = secret.get("items")
            for item in items or [{"key": k, "path": k} for k in data]:
                assert item["key"] in data, f"volume {mount['name']}: no key {item['key']!r}"
                (here / item["path"]).write_text(data[item["key"]])
    return mounted


def port_named(container: Manifest, name: str) -> int:
    ports = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    assert len(ports) == 1, f"port {name!r}: {ports}"
    return int(ports[0])


@dataclass(frozen=True)
class NatsPod:
    """A NATS server pod's configuration as nats-server reads it: nats.conf and the
    files it includes as mounted, paths pointed at the written mounts, and the env."""

    conf: Path
    env: dict[str, str]
    mounted: dict[str, Path]

    def load(self) -> dict[str, Any]:
        return natsconf.load(self.conf, self.env)

    def users(self) -> list[NatsUser]:
        """The users the servers admit (by name and password), as the harness's
        nats-servers can be told to admit them; the chart names them by role."""
        conf = self.load()
        return [
            NatsUser(user["user"], name=user["user"], password=user["password"])
            for account in conf["accounts"].values()
            for user in account["users"]
        ]


def nats_pod(manifests: list[Manifest], secrets: Secrets, root: Path, index: int = 0) -> NatsPod:
    statefulset = one(manifests, "StatefulSet", f"{RELEASE}-nats")
    server = container(statefulset)
    mounted = materialize(statefulset, manifests, secrets, root)
    args = server["args"]
    conf = Path(localize(args[args.index("--config") + 1], mounted))
    for path in conf.parent.iterdir():
        path.write_text(localize(path.read_text(), mounted))
    env = env_of(server, secrets, f"{RELEASE}-nats-{index}")
    return NatsPod(conf, env, mounted)


def values_of(name: str) -> dict[str, Any]:
    """The chart's values.yaml with the values file ``name`` over it."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    path = VALUES[name]
    return _merged(values, yaml.safe_load(path.read_text())) if path is not None else values


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def password() -> str:
    """As the chart makes them: a letter, then letters and digits."""
    return secrets.choice(string.ascii_letters) + "".join(
        secrets.choice(string.ascii_letters + string.digits) for _ in range(31)
    )


@functools.cache
def given(values: str) -> dict[str, dict[str, str]]:
    """The Secrets an operator creates before installing with these values: the NATS
    credentials (``nats.auth.existingSecret``), the TLS Secrets, with a test CA, and the
    token keys (the tests' JWKS)."""
    path = VALUES[values]
    settings = yaml.safe_load(path.read_text()) if path is not None else {}
    nats = settings.get("nats", {})
    made: dict[str, dict[str, str]] = {}
    existing = nats.get("auth", {}).get("existingSecret")
    if existing:
        made[existing] = {key: password() for key in (*ROLES, "route")}
    auth = settings.get("auth", {"jwksSecret": JWKS_SECRET})  # the default render's
    if auth.get("jwksSecret"):
        made[auth["jwksSecret"]] = {"jwks.json": JWKS_FILE.read_text()}
    if auth.get("hs256Secret"):
        made[auth["hs256Secret"]] = {"hs256-secret": password() + password()}
    tls = nats.get("tls", {})
    if tls.get("enabled"):
        ca = Ca.make("chat-cluster test CA")
        servers = range(nats.get("replicas", 3))
        names = [f"{RELEASE}-nats-{i}.{RELEASE}-nats-headless.{NAMESPACE}.svc" for i in servers]
        made[tls["secretName"]] = ca.issue("nats", [*names, "127.0.0.1"])
        if tls.get("verifyClients"):
            made[tls["clientSecretName"]] = ca.issue("chat-cluster client", [], client=True)
    return made


def localize(value: str, mounted: Mapping[str, Path]) -> str:
    """``value`` with every path under a mount pointed at where ``materialize`` put it."""
    if not mounted:
        return value
    paths = sorted(mounted, key=len, reverse=True)
    pattern = "|".join(re.escape(p) for p in paths)
    return re.sub(rf"(?<![\w/])({pattern})(?=[/\"\s]|$)", lambda m: str(mounted[m.group(1)]), value)


BASE_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME")
"""All a chart process gets from the test's environment besides the chart's own env: as
in the pod, nothing else (in particular no NATS credentials of the test's own)."""


class ChartProcess(Service):
    """A process started with the chart's command and environment."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path) -> None:
        port = free_port()
        super().__init__(name, [], port, workdir / f"{name}.log")
        self.command = command
        # Loopback only: tests never listen beyond this machine (the chart binds 0.0.0.0).
        self.env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}

    def start(self) -> None:
        # The console script of the environment running the tests, as the image's PATH has it.
        beside = Path(sys.executable).with_name(self.command[0])
        program = str(beside) if beside.exists() else shutil.which(self.command[0])
        assert program, f"{self.command[0]} is not installed (pip install -e .)"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [program, *self.command[1:]],
            env={**{k: os.environ[k] for k in BASE_ENV if k in os.environ}, **(self.env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class ChartNode(ChartProcess):
    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path) -> None:
        super().__init__(name, command, {**env, "NODE_ID": name}, workdir)
