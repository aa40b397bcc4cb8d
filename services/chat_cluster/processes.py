"""Child processes and ports on this machine: shared by ``up``, the tests and the benchmarks."""

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from servicekit.workers import WORKER_ENV

_PR_SET_PDEATHSIG = 1
log = logging.getLogger("chat_cluster.processes")


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when its parent dies, even by
    SIGKILL (Linux's PR_SET_PDEATHSIG); None elsewhere. Use it only from the main thread:
    the signal follows the thread that started the child, not the process."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before we armed it
            os.kill(os.getpid(), sig)

    return arm


def terminate(proc: "subprocess.Popen[bytes]", timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens there (with SO_REUSEADDR: connections of a former life in
    TIME_WAIT do not count; without SO_REUSEPORT: another node's workers do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def supervise(argv: list[str], count: int, host: str, port: int, env: Mapping[str, str]) -> int:
    """Run ``python -m chat_cluster <argv>`` ``count`` times as workers (``--workers``,
    servicekit.workers); return when all have exited: 0 if they were asked to stop and
    did, 1 if one died on its own. It forwards SIGTERM and SIGINT (each worker drains its
    own sockets with 1001), and stops the others when one dies: a node is whole or not
    running, and its orchestrator restarts it. Workers get SIGKILL if the supervisor
    dies: ``kill -9`` of the node is a crash of all of it, as with one process."""
    if not port_free(port, host):  # two nodes must never share a port by accident
        print(f"chat-cluster: {host}:{port} is already in use", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="chat-workers-"))  # mode 0700
    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    # SIGINT as SIGTERM: workers ignore SIGINT, which a terminal's Ctrl-C
                    # also sends them directly (a second one would skip their drain).
                    proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(count):
        proc = subprocess.Popen(
            [sys.executable, "-m", "chat_cluster", *argv],
            env={**env, WORKER_ENV: f"{index}/{count}/{directory}"},
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        procs[proc.pid] = proc
    code = 0
    try:
        while any(proc.returncode is None for proc in procs.values()):
            pid, status = os.wait()  # retried after a signal handler ran (PEP 475)
            ended = procs.get(pid)
            if ended is None:
                continue
            ended.returncode = os.waitstatus_to_exitcode(status)
            if not stopping:
                log.error("worker %d exited (%s): stopping the node", pid, ended.returncode)
                code = 1
                forward(signal.SIGTERM, None)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return code
