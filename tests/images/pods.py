"""The chart's workloads run as podman containers, the way a kubelet would run their pods.

From the rendered manifests, each pod gets: the container's image, command and args; its
env with Secrets resolved and the downward API filled in; the pod and container security
contexts (user, group, fsGroup, read-only root, dropped capabilities, no new privileges);
its volumes (emptyDir as tmpfs, ConfigMaps and Secrets as files with the volume's mode,
group-owned by fsGroup, a StatefulSet's claim as a named volume that outlives the pod);
its memory limit; and DNS names as the cluster's DNS would give them (the pod's own name
under a headless Service, and every Service that selects it, short and qualified).

Probes are run from the host against the pod's IP, as the kubelet runs them from the
node; stopping runs the preStop hook, then SIGTERM, then SIGKILL after the pod's
termination grace period. What a cluster adds beyond this (scheduling, Service virtual IPs
and port remapping, PVC provisioning, restarts by liveness) is not emulated.
"""

import contextlib
import json
import os
import secrets as random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.chart import NAMESPACE, Manifest, Secrets, env_of
from tests.images.podman import podman

DOMAIN = "cluster.local"
LABEL = "org.chat-cluster.test"
"""On every container, network and volume a test makes; its value is the test's pid."""


def _names(name: str, namespace: str) -> list[str]:
    """``name`` as a pod in ``namespace`` may write it (search domains) and fully qualified."""
    return [
        name,
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.{DOMAIN}",
    ]


def _memory(quantity: str) -> str:
    """A Kubernetes memory quantity (512Mi, 1Gi) as podman's --memory (bytes)."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return str(int(float(quantity[: -len(unit)]) * factor))
    return str(int(quantity))


@dataclass
class Pod:
    """One pod of a workload, run as one container."""

    name: str
    workload: Manifest
    container_name: str
    ip: str = ""
    stopped: bool = False
    url: str = ""
    """http://ip:port of the container's first port (the checker reads nodes by url)."""
    log_lines: list[str] = field(default_factory=list)

    @property
    def spec(self) -> Manifest:
        spec: Manifest = self.workload["spec"]["template"]["spec"]
        return spec

    @property
    def box(self) -> Manifest:
        box: Manifest = self.spec["containers"][0]
        return box

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        for port in self.box.get("ports", []):
            if port["name"] == name_or_number:
                return int(port["containerPort"])
        raise AssertionError(f"{self.name}: no port {name_or_number!r}")

    def probe(self, kind: str) -> bool:
        """One run of the container's ``kind`` probe (readinessProbe, livenessProbe,
        startupProbe) from outside the pod, as the kubelet runs it; no probe: passes."""
        probe = self.box.get(kind)
        if probe is None:
            return True
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://{self.ip}:{self.port(get['port'])}{get.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            except (urllib.error.URLError, OSError):
                return False
        if "tcpSocket" in probe:
            try:
                socket.create_connection(
                    (self.ip, self.port(probe["tcpSocket"]["port"])), timeout=timeout
                ).close()
                return True
            except OSError:
                return False
        command = probe["exec"]["command"]
        return podman("exec", self.container_name, *command, check=False).returncode == 0

    def ready(self) -> bool:
        return not self.stopped and self.running() and self.probe("readinessProbe")

    def running(self) -> bool:
        out = podman("inspect", "--format", "{{.State.Running}}", self.container_name, check=False)
        return out.stdout.strip() == "true"

    def logs(self) -> str:
        out = podman("logs", self.container_name, check=False)
        return out.stdout + out.stderr

    def exec(self, *command: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        args = ["exec", *(["--interactive"] if stdin is not None else []), self.container_name]
        return podman(*args, *command, check=False, input=stdin)


class Cluster:
    """A release's rendered manifests, run on one podman network of its own."""

    def __init__(self, manifests: list[Manifest], secrets: Secrets, workdir: Path) -> None:
        self.manifests = manifests
        self.secrets = secrets
        self.workdir = workdir
        self.prefix = f"cc{os.getpid()}-{random.token_hex(2)}"
        self.network = f"{self.prefix}-net"
        self.pods: list[Pod] = []
        self.volumes: list[str] = []
        sweep()
        podman("network", "create", "--label", f"{LABEL}={os.getpid()}", self.network)

    def find(self, kind: str, name: str) -> Manifest:
        found = [m for m in self.manifests if m["kind"] == kind and m["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} in the manifests"
        return found[0]

    def _aliases(self, workload: Manifest, pod: str) -> list[str]:
        labels = workload["spec"]["template"]["metadata"].get("labels", {})
        namespace = workload["metadata"].get("namespace", NAMESPACE)
        names: list[str] = []
        for service in (m for m in self.manifests if m["kind"] == "Service"):
            selector = service["spec"].get("selector") or {}
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                continue
            name = service["metadata"]["name"]
            names += _names(name, namespace)
            if workload["kind"] == "StatefulSet" and workload["spec"]["serviceName"] == name:
                names += _names(f"{pod}.{name}", namespace)
        return names

    def _files(self, pod: str, volume: Manifest, fs_group: int | None) -> Path:
        """A ConfigMap, Secret or projected volume written as the kubelet writes it."""
        here = self.workdir / pod / volume["name"]
        here.mkdir(parents=True, exist_ok=True)
        maps = {m["metadata"]["name"]: m for m in self.manifests if m["kind"] == "ConfigMap"}
        if "projected" in volume:
            sources, mode = volume["projected"]["sources"], volume["projected"].get("defaultMode")
        else:
            sources = [volume]
            mode = (volume.get("secret") or volume.get("configMap") or {}).get("defaultMode")
        for source in sources:
            if "configMap" in source:
                ref = source["configMap"]
                assert ref["name"] in maps, f"{pod}: no ConfigMap {ref['name']!r}"
                data = dict(maps[ref["name"]].get("data", {}))
            else:
                ref = source["secret"]
                name = ref.get("secretName") or ref["name"]
                assert name in self.secrets, f"{pod}: no Secret {name!r}"
                data = dict(self.secrets[name])
            for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                assert item["key"] in data, f"{pod}: volume {volume['name']} has no {item['key']!r}"
                path = here / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(data[item["key"]])
                path.chmod(item.get("mode", mode if mode is not None else 0o644))
                os.chown(path, 0, fs_group if fs_group is not None else 0)
        here.chmod(0o755)
        return here

    def start(self, workload: Manifest, name: str, image: str | None = None) -> Pod:
        """Start pod ``name`` of ``workload``; ``image`` replaces the manifest's only where
        no registry serves it (the test's NATS image)."""
        spec = workload["spec"]["template"]["spec"]
        assert len(spec["containers"]) == 1 and not spec.get("initContainers"), name
        box = spec["containers"][0]
        pod_security = spec.get("securityContext", {})
        security = {**pod_security, **box.get("securityContext", {})}
        user, group = security.get("runAsUser"), security.get("runAsGroup")
        assert user is not None and group is not None, f"{name}: no runAsUser/runAsGroup"
        if security.get("runAsNonRoot"):
            assert int(user) != 0, f"{name}: runAsNonRoot with runAsUser 0"
        fs_group = pod_security.get("fsGroup")
        container = f"{self.prefix}-{name}"
        args = ["run", "--detach", "--name", container, "--hostname", name]
        args += ["--label", f"{LABEL}={os.getpid()}"]
        args += ["--network", self.network]
        args += [a for alias in self._aliases(workload, name) for a in ("--network-alias", alias)]
        args += ["--user", f"{user}:{group}"]
        if fs_group is not None:
            args += ["--group-add", str(fs_group)]
        if security.get("readOnlyRootFilesystem"):
            # Only the chart's own volumes are writable: no tmpfs of podman's on /tmp, /run.
            args += ["--read-only", "--read-only-tmpfs=false"]
        capabilities = security.get("capabilities", {})
        args += [a for cap in capabilities.get("drop", []) for a in ("--cap-drop", cap)]
        args += [a for cap in capabilities.get("add", []) for a in ("--cap-add", cap)]
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        limit = box.get("resources", {}).get("limits", {}).get("memory")
        if limit:
            args += ["--memory", _memory(str(limit))]
        grace = int(spec.get("terminationGracePeriodSeconds", 30))
        args += ["--stop-timeout", str(grace)]
        # Secrets travel in a 0600 file, never on a command line.
        env_file = self.workdir / f"{name}.env"
        env = env_of(box, self.secrets, name)
        assert all("\n" not in v for v in env.values()), f"{name}: a multi-line env value"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        env_file.chmod(0o600)
        args += ["--env-file", str(env_file)]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in box.get("volumeMounts", []):
            target = mount["mountPath"]
            volume = volumes.get(mount["name"])
            if volume is None:  # a StatefulSet's claim: a named volume, kept across restarts
                claims = {c["metadata"]["name"] for c in workload["spec"]["volumeClaimTemplates"]}
                assert mount["name"] in claims, f"{name}: no volume {mount['name']!r}"
                claim = f"{self.prefix}-{mount['name']}-{name}"
                if claim not in self.volumes:
                    podman("volume", "create", "--label", f"{LABEL}={os.getpid()}", claim)
                    self.volumes.append(claim)
                # U: owned by the pod's user, as fsGroup makes a fresh claim writable.
                args += ["--volume", f"{claim}:{target}:U"]
            elif "emptyDir" in volume:
                args += ["--mount", f"type=tmpfs,destination={target},tmpfs-mode=1777"]
            else:
                source = self._files(name, volume, fs_group)
                args += ["--volume", f"{source}:{target}:ro"]
        if "command" in box:
            args += ["--entrypoint", json.dumps(box["command"])]
        args += [image or box["image"], *box.get("args", [])]
        podman(*args)
        pod = Pod(name, workload, container)
        pod.ip = self._ip(container)
        ports = box.get("ports", [])
        pod.url = f"http://{pod.ip}:{ports[0]['containerPort']}" if ports else ""
        self.pods.append(pod)
        return pod

    def _ip(self, container: str) -> str:
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        ip = podman("inspect", "--format", template, container).stdout.strip()
        assert ip, f"{container} has no IP on {self.network}"
        return ip

    def stop(self, pod: Pod) -> None:
        """As the kubelet stops a pod: the preStop hook (in the container), then SIGTERM,
        then SIGKILL once the grace period (counted from the start of the hook) ends."""
        pod.stopped = True
        started = time.monotonic()
        grace = int(pod.spec.get("terminationGracePeriodSeconds", 30))
        hook = pod.box.get("lifecycle", {}).get("preStop", {}).get("exec")
        if hook is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                podman("exec", pod.container_name, *hook["command"], check=False, timeout=grace)
        left = max(1, round(grace - (time.monotonic() - started)))
        podman("stop", "--time", str(left), pod.container_name, check=False, timeout=left + 30)
        pod.log_lines = pod.logs().splitlines()
        podman("rm", "--force", pod.container_name, check=False)

    def run_job(self, job: Manifest, timeout: float) -> tuple[int, str]:
        """A Job's pod to completion: (exit code, its output)."""
        pod = self.start(job, f"{job['metadata']['name']}-{random.token_hex(3)}")
        waited = podman("wait", pod.container_name, timeout=timeout)
        logs = pod.logs()
        podman("rm", "--force", pod.container_name, check=False)
        self.pods.remove(pod)
        return int(waited.stdout.strip().splitlines()[-1]), logs

    def close(self) -> None:
        names = [p.container_name for p in self.pods]
        if names:
            podman("rm", "--force", "--time", "0", *names, check=False, timeout=120)
        if self.volumes:
            podman("volume", "rm", "--force", *self.volumes, check=False)
        podman("network", "rm", "--force", self.network, check=False)


def sweep() -> None:
    """Remove what earlier test runs left behind when they were killed (their pid is
    gone): containers, then volumes and networks."""
    listings = {
        "container": ["ps", "--all", "--format", "{{.Names}} {{.Labels}}"],
        "volume": ["volume", "ls", "--format", "{{.Name}} {{.Labels}}"],
        "network": ["network", "ls", "--format", "{{.Name}} {{.Labels}}"],
    }
    for kind, listing in listings.items():
        out = podman(*listing, "--filter", f"label={LABEL}", check=False).stdout
        for line in out.splitlines():
            name, _, labels = line.partition(" ")
            pid = labels.split(f"{LABEL}:", 1)[-1].split()[0].rstrip("]")
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                podman(kind, "rm", "--force", name, check=False, timeout=120)
