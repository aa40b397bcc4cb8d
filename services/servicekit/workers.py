"""``--workers N``: N processes serving one port, so that a machine's every core delivers.

Each worker is a whole service: the chat node's has its own NATS connection, its own
consumer and its own replica, as a second node on the same machine would (the
shared-nothing design needs nothing more). Each binds its own listening socket with
``SO_REUSEPORT``, and the kernel spreads new connections over them by a hash of the
client's address and port, without a process in between.

The supervisor (``chat_cluster.processes.supervise``) starts them and stops them.

A worker also listens on a Unix socket in a directory only the supervisor's user can
read, so that ``/metrics`` and ``/readyz`` on any worker can speak for the node: the
first merges every worker's metrics (a ``worker`` label on each sample), the second is
200 only when every worker is ready. Limits (connections, sends per user, sockets per
user) hold per worker.
"""

import asyncio
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

WORKER_ENV = "CHAT_WORKER"
"""Set by the supervisor for each worker: ``index/count/directory``."""
LOCAL = "self"
"""``?worker=self``: this worker's own answer, without asking the others."""


@dataclass(frozen=True)
class Worker:
    index: int
    count: int
    directory: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Worker | None":
        raw = env.get(WORKER_ENV)
        if not raw:
            return None
        index, count, directory = raw.split("/", 2)
        return cls(int(index), int(count), Path(directory))

    def socket_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"

    @property
    def label(self) -> tuple[str, str]:
        return ("worker", str(self.index))

    def listeners(self, host: str, port: int) -> list[socket.socket]:
        """The shared port (``SO_REUSEPORT``) and this worker's own Unix socket."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        shared = socket.socket(family, socket.SOCK_STREAM)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind((host, port))
        shared.listen(2048)
        path = self.socket_path(self.index)
        path.unlink(missing_ok=True)
        own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        own.bind(str(path))
        own.listen(64)
        return [shared, own]

    async def ask_others(self, target: str, timeout: float = 2.0) -> dict[int, bytes | None]:
        """Every other worker's answer body to ``GET target`` (None: no 200 in time)."""
        others = [i for i in range(self.count) if i != self.index]
        answers = await asyncio.gather(
            *(_get(self.socket_path(i), target, timeout) for i in others)
        )
        return dict(zip(others, answers, strict=True))


async def _get(path: Path, target: str, timeout: float) -> bytes | None:
    """A minimal HTTP/1.1 GET over a Unix socket: the body of a 200, else None."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(
                    f"GET {target} HTTP/1.1\r\nhost: worker\r\nconnection: close\r\n\r\n".encode()
                )
                raw = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    return body if status == [b"200"] else None


def merge_metrics(texts: list[str]) -> str:
    """Prometheus texts of several workers as one: a family's HELP and TYPE once, then
    every worker's samples of it (the format wants a family's samples together)."""
    families: dict[str, list[str]] = {}
    for text in texts:
        current: list[str] | None = None
        header = False
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name = line.split(" ", 3)[2]
                current = families.get(name)
                if current is None:
                    current = families[name] = [line]
                    header = True
                else:
                    header = False
            elif line.startswith("# TYPE "):
                if header and current is not None:
                    current.append(line)
            elif line and current is not None:
                current.append(line)
    return "\n".join(line for lines in families.values() for line in lines) + "\n"
