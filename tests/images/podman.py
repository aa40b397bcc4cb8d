"""Podman on this kind of machine: one containers.conf, and every podman call through
``podman()`` so that it is always used.

Two settings are needed on a VM with hybrid cgroups (v1 controllers): the runc runtime
(crun refuses hybrid cgroups) driven through cgroupfs, and default ulimits no higher than
the hard limits podman itself runs under (otherwise runc's setrlimit fails with EPERM).
"""

import os
import resource
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chat-cluster-image"

NPROC = 32768
NOFILE = 20000


def conf_path() -> Path:
    """containers.conf for this machine, written once; ``CONTAINERS_CONF`` names it."""
    nofile = min(NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = NPROC if nproc_hard == resource.RLIM_INFINITY else min(NPROC, nproc_hard)
    text = (
        "# Written by tests/images/podman.py for this machine.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    path = CACHE / "containers.conf"
    if not path.exists() or path.read_text() != text:
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(conf_path())}


def podman(
    *args: str, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run podman and capture its output; a failure names the command and what it said."""
    result = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        errors="replace",
        env=env(),
        timeout=timeout,
        check=False,
        input=input,
    )
    if check and result.returncode != 0:
        raise PodmanError(f"podman {' '.join(args)}: exit {result.returncode}: {result.stderr}")
    return result


class PodmanError(Exception):
    pass


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0
