"""A load generator that behaves like real clients, and records every attempt.

REST and WebSocket senders use unique ids and, after a failure, retry the same
id on another node (the log's duplicate window makes that safe). A raw sender
publishes on core NATS the way ``nats pub`` does: no ack, so no promise.
Every loop is bounded in count and in time.
"""

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import nats
import nats.errors
import websockets

from tests.support import bearer

CHANNELS = [f"c{i}" for i in range(5)]
RETRY_FOR = 15.0
"""Seconds a client keeps retrying one message (same id, other nodes) before it gives up."""


@dataclass
class Attempt:
    id: str
    channel: str
    via: str
    seq: int | None = None  # the acknowledged seq
    acked_at: float = 0.0  # time.monotonic() of the ack
    tries: int = 0
    errors: list[str] = field(default_factory=list)


class Load:
    def __init__(
        self,
        nodes: Callable[[], list[str]],
        nats_urls: str,
        raw_creds: str,
        per_worker: int = 150,
        interval: float = 0.01,
        deadline: float = 120.0,
        tag: str = "",
    ) -> None:
        self._nodes = nodes  # base URLs of the nodes to use now
        self._nats_urls = nats_urls.split(",")
        self._raw_creds = raw_creds  # the publisher role's nkey seed file
        self._per_worker = per_worker
        self._interval = interval
        self._deadline = time.monotonic() + deadline
        self._tag = tag  # before every id: loads that share a log keep their ids apart
        self.attempts: dict[str, Attempt] = {}
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []
        self.sent_all = asyncio.Event()

    def start(self, rest: int = 2, ws: int = 1, raw: int = 1) -> None:
        workers = [self._rest(i) for i in range(rest)]
        workers += [self._ws(i) for i in range(ws)]
        workers += [self._raw(i) for i in range(raw)]
        self._tasks = [asyncio.create_task(w) for w in workers]

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        self._stop = True
        await self.wait()

    def _running(self, k: int) -> bool:
        return not self._stop and k < self._per_worker and time.monotonic() < self._deadline

    def _new(self, prefix: str, k: int, via: str) -> Attempt:
        attempt = Attempt(f"{self._tag}{prefix}-{k}", random.choice(CHANNELS), via)
        self.attempts[attempt.id] = attempt
        return attempt

    def _pick(self, avoid: str | None = None) -> str | None:
        nodes = self._nodes()
        others = [n for n in nodes if n != avoid] or nodes
        return random.choice(others) if others else None

    async def _rest(self, w: int) -> None:
        async with httpx.AsyncClient(timeout=3, headers=bearer()) as http:
            for k in itertools.count():
                if not self._running(k):
                    return
                attempt = self._new(f"rest{w}", k, "rest")
                body = {
                    "channel": attempt.channel,
                    "text": f"text of {attempt.id}",
                    "id": attempt.id,
                }
                node = None
                give_up = time.monotonic() + RETRY_FOR
                pause = 0.05
                while attempt.seq is None and time.monotonic() < min(give_up, self._deadline):
                    node = self._pick(avoid=node)
                    attempt.tries += 1
                    if node is None:
                        await asyncio.sleep(0.1)
                        continue
                    try:
                        resp = await http.post(node + "/messages", json=body)
                        if resp.status_code == 201:
                            attempt.seq = resp.json()["seq"]
                            attempt.acked_at = time.monotonic()
                            break
                        attempt.errors.append(f"{resp.status_code} {resp.text[:80]}")
                    except httpx.HTTPError as exc:
                        attempt.errors.append(repr(exc)[:80])
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.5)
                await asyncio.sleep(self._interval)

    async def _ws(self, w: int) -> None:
        ws = None
        node = None
        try:
            for k in itertools.count():
                if not self._running(k):
                    return
                attempt = self._new(f"ws{w}", k, "ws")
                frame = json.dumps(
                    {
                        "op": "send",
                        "channel": attempt.channel,
                        "text": f"text of {attempt.id}",
                        "id": attempt.id,
                    }
                )
                give_up = time.monotonic() + RETRY_FOR
                while attempt.seq is None and time.monotonic() < min(give_up, self._deadline):
                    attempt.tries += 1
                    try:
                        if ws is None:
                            node = self._pick(avoid=node)
                            if node is None:
                                await asyncio.sleep(0.1)
                                continue
                            # A paused node never answers a close: do not wait on it.
                            ws = await websockets.connect(
                                node.replace("http", "ws") + "/ws",
                                open_timeout=3,
                                close_timeout=1,
                                additional_headers=bearer(),
                            )
                        await ws.send(frame)
                        async with asyncio.timeout(3):
                            answer = json.loads(await ws.recv())
                        if answer["op"] == "ack" and answer["id"] == attempt.id:
                            attempt.seq = answer["seq"]
                            attempt.acked_at = time.monotonic()
                        else:
                            attempt.errors.append(str(answer)[:80])
                            await asyncio.sleep(0.2)
                    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                        attempt.errors.append(repr(exc)[:80])
                        if ws is not None:
                            await ws.close()
                        ws = None
                        await asyncio.sleep(0.05)
                await asyncio.sleep(self._interval)
        finally:
            if ws is not None:
                await ws.close()

    async def _raw(self, w: int) -> None:
        try:
            nc = await nats.connect(
                self._nats_urls,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                connect_timeout=2,
                nkeys_seed=self._raw_creds,
            )
        except Exception as exc:
            self._new(f"raw{w}", 0, "raw").errors.append(repr(exc))
            return
        try:
            for k in itertools.count():
                if not self._running(k):
                    return
                attempt = self._new(f"raw{w}", k, "raw")
                payload = {"text": f"text of {attempt.id}", "id": attempt.id}
                attempt.tries = 1
                try:
                    await nc.publish(f"chat.{attempt.channel}", json.dumps(payload).encode())
                except Exception as exc:
                    attempt.errors.append(repr(exc)[:80])
                await asyncio.sleep(self._interval)
        finally:
            with contextlib.suppress(OSError, nats.errors.Error):
                await nc.close()
