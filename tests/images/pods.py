"""The chart's workloads run as podman containers, the way a kubelet would run their pods.

From the rendered manifests, each pod gets: the container's image, command and args; its
env with Secrets resolved and the downward API filled in; the pod and container security
contexts (user, group, fsGroup, read-only root, dropped capabilities, no new privileges);
its volumes (emptyDir as tmpfs, ConfigMaps and Secrets as files with the volume's mode,
group-owned by fsGroup, a StatefulSet's claim as a named volume that outlives the pod);
its memory limit; and DNS names as the cluster's DNS would give them (the pod's own name
under a headless Service, and every Service that selects it, short and qualified).

Probes are run from the host against the pod's IP, as the kubelet runs them from the
node, each when a test waits on it (not periodically); stopping runs the preStop hook,
then SIGTERM, then SIGKILL after the pod's termination grace period. What a cluster adds
beyond this (scheduling, Service virtual IPs and port remapping, endpoints that follow
readiness, PVC provisioning, periodic probes and restarts by liveness) is not emulated: a
Service here is a DNS name of every pod it selects, ready or not. A setting this module
does not translate fails the test rather than being skipped.
"""

import contextlib
import json
import os
import secrets as random
import shutil
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
"""On every container, network and volume a test makes: the test process's pid and
start time (a pid alone may be reused)."""


def _process(pid: int) -> str:
    """``pid-starttime`` of a live process; "" if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{pid}-{stat.rsplit(')', 1)[1].split()[19]}"


OWNER = _process(os.getpid())


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
    in_service: bool = False
    """Seen ready by a test and not stopping: what a Service's endpoints would hold."""
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
        try:
            ran = podman("exec", self.container_name, *command, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return ran.returncode == 0

    def ready(self) -> bool:
        return not self.stopped and self.running() and self.probe("readinessProbe")

    def running(self) -> bool:
        out = podman("inspect", "--format", "{{.State.Running}}", self.container_name, check=False)
        return out.stdout.strip() == "true"

    def logs(self) -> str:
        out = podman("logs", self.container_name, check=False)
        return out.stdout + out.stderr

    def exec(self, *command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
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
        self.claims: dict[str, str] = {}
        """Pod name -> its claim's volume (one claim per pod in this chart)."""
        sweep()
        podman("network", "create", "--label", f"{LABEL}={OWNER}", self.network)

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
                file_mode = item.get("mode", mode if mode is not None else 0o644)
                # With fsGroup, the kubelet makes the files the group's, readable by it.
                path.chmod(file_mode | (0o040 if fs_group is not None else 0))
                os.chown(path, 0, fs_group if fs_group is not None else 0)
        here.chmod(0o755)
        return here

    def start(self, workload: Manifest, name: str, image: str | None = None) -> Pod:
        """Start pod ``name`` of ``workload``; ``image`` replaces the manifest's only where
        no registry serves it (the test's NATS image)."""
        spec = workload["spec"]["template"]["spec"]
        assert len(spec["containers"]) == 1 and not spec.get("initContainers"), name
        box = spec["containers"][0]
        assert not box.get("envFrom"), f"{name}: envFrom is not translated"
        pod_security = spec.get("securityContext", {})
        security = {**pod_security, **box.get("securityContext", {})}
        user, group = security.get("runAsUser"), security.get("runAsGroup")
        assert user is not None and group is not None, f"{name}: no runAsUser/runAsGroup"
        if security.get("runAsNonRoot"):
            assert int(user) != 0, f"{name}: runAsNonRoot with runAsUser 0"
        fs_group = pod_security.get("fsGroup")
        seccomp = security.get("seccompProfile", {}).get("type", "RuntimeDefault")
        assert seccomp == "RuntimeDefault", f"{name}: seccomp {seccomp} is not translated"
        container = f"{self.prefix}-{name}"
        args = ["run", "--detach", "--name", container, "--hostname", name]
        args += ["--label", f"{LABEL}={OWNER}", "--http-proxy=false"]
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
            args += ["--memory", _memory(str(limit)), "--memory-swap", _memory(str(limit))]
        grace = int(spec.get("terminationGracePeriodSeconds", 30))
        args += ["--stop-timeout", str(grace)]
        # Secrets travel in a 0600 file, never on a command line.
        env_file = self.workdir / f"{name}.env"
        env = env_of(box, self.secrets, name)
        assert all("\n" not in v for v in env.values()), f"{name}: a multi-line env value"
        with os.fdopen(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in env.items()))
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
                    self._claim(claim, fs_group)
                self.claims[name] = claim
                args += ["--volume", f"{claim}:{target}"]
            elif "emptyDir" in volume:
                args += ["--mount", f"type=tmpfs,destination={target},tmpfs-mode=777"]
            else:
                source = self._files(name, volume, fs_group)
                args += ["--volume", f"{source}:{target}:ro"]
        if "command" in box:
            args += ["--entrypoint", json.dumps(box["command"])]
        args += [image or box["image"], *box.get("args", [])]
        pod = Pod(name, workload, container)
        self.pods.append(pod)  # before anything can fail: close() removes it
        podman(*args)
        pod.ip = self._ip(container)
        ports = box.get("ports", [])
        pod.url = f"http://{pod.ip}:{ports[0]['containerPort']}" if ports else ""
        return pod

    def _claim(self, claim: str, fs_group: int | None) -> None:
        """A fresh volume, as a provisioner makes it and the kubelet hands it to a pod
        with fsGroup: root's, the group's with setgid, writable by the group."""
        podman("volume", "create", "--label", f"{LABEL}={OWNER}", claim)
        self.volumes.append(claim)
        if fs_group is not None:
            root = Path(self.mountpoint(claim))
            os.chown(root, 0, fs_group)
            root.chmod(0o2775)

    def mountpoint(self, claim: str) -> str:
        return podman("volume", "inspect", "--format", "{{.Mountpoint}}", claim).stdout.strip()

    def _ip(self, container: str) -> str:
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        ip = podman("inspect", "--format", template, container).stdout.strip()
        assert ip, f"{container} has no IP on {self.network}"
        return ip

    def stop(self, pod: Pod) -> None:
        """As the kubelet stops a pod: the preStop hook (in the container), then SIGTERM,
        then SIGKILL once the grace period (counted from the start of the hook) ends."""
        pod.stopped, pod.in_service = True, False
        started = time.monotonic()
        grace = int(pod.spec.get("terminationGracePeriodSeconds", 30))
        pre_stop = pod.box.get("lifecycle", {}).get("preStop", {})
        assert set(pre_stop) <= {"exec"}, f"{pod.name}: preStop {pre_stop} is not translated"
        hook = pre_stop.get("exec")
        if hook is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                podman("exec", pod.container_name, *hook["command"], check=False, timeout=grace)
        left = max(1, round(grace - (time.monotonic() - started)))
        podman("stop", "--time", str(left), pod.container_name, check=False, timeout=left + 30)
        pod.log_lines = pod.logs().splitlines()
        podman("rm", "--force", pod.container_name, check=False)

    def start_job(self, job: Manifest) -> Pod:
        return self.start(job, f"{job['metadata']['name']}-{random.token_hex(3)}")

    def finish_job(self, pod: Pod, timeout: float) -> tuple[int, str]:
        """A Job's pod to completion: (exit code, its output)."""
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
        # The env files and mounted Secrets hold every NATS password: gone with the pods.
        shutil.rmtree(self.workdir, ignore_errors=True)


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
            owner = labels.split(f"{LABEL}:", 1)[-1].split()[0].rstrip("]")
            pid = owner.split("-")[0]
            if pid.isdigit() and _process(int(pid)) != owner:
                podman(kind, "rm", "--force", name, check=False, timeout=120)
