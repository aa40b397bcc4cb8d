"""Render the Helm chart with the real helm binary and look things up in the manifests."""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT

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


def render(values: Path | None = None, kubernetes: str = KUBERNETES) -> list[Manifest]:
    args = [helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", kubernetes]
    if values is not None:
        args += ["-f", str(values)]
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


def env_of(container: Manifest, pod_name: str = "rel-chat-0") -> dict[str, str]:
    """The container's environment as the process sees it (downward API filled in)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", item
            env[item["name"]] = pod_name
    return env


def port_named(container: Manifest, name: str) -> int:
    ports = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    assert len(ports) == 1, f"port {name!r}: {ports}"
    return int(ports[0])
