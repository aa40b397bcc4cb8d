"""Presence through a fault: one WebSocket per node, joined to one channel, held by a
client that reconnects to the same node whenever it is dropped (as a user of that node
would). After the fault heals, every running node must show exactly the holders whose
node runs: nobody who left (a killed node's users, a former life of a restarted node)
and nobody missing, within PRESENCE_TTL and an interval."""

import asyncio
import contextlib
import json
import time

import websockets

from chat_cluster.local import Service
from tests.support import bearer, get_json, token, until

CHANNEL = "presence-check"
NODE_ENV = {"PRESENCE_INTERVAL": "1", "PRESENCE_TTL": "3"}
"""The fault suite's nodes beat every second, so convergence is checked in seconds."""
CONVERGE_WITHIN = 3 + 1 + 10.0
"""The TTL (a silent node's users), one interval (a beat), and room for a node's NATS
reconnection after a partition or a server restart."""


def holder(node: Service) -> str:
    return f"holder-{node.name}"


class Holders:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def hold(self, node: Service) -> None:
        self._tasks[node.name] = asyncio.create_task(self._hold(node))

    async def _hold(self, node: Service) -> None:
        url = node.url.replace("http://", "ws://") + "/ws"
        headers = bearer(token(holder(node), read=("*",), ttl=3600))
        while True:
            with contextlib.suppress(OSError, websockets.WebSocketException, TimeoutError):
                async with websockets.connect(url, additional_headers=headers) as ws:
                    join = json.dumps({"op": "join", "channel": CHANNEL})
                    await ws.send(join)
                    async for raw in ws:  # until the node drops us
                        if json.loads(raw).get("op") == "error":
                            # A node (or, with --workers, one of its workers) still
                            # loading the log answers not_ready: join again, as the
                            # clients do.
                            await asyncio.sleep(0.2)
                            await ws.send(join)
            await asyncio.sleep(0.2)  # reconnect pacing, not synchronisation

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def shown(node: Service) -> dict[str, int]:
    page = get_json(f"{node.url}/presence?channel={CHANNEL}")
    return {m["user"]: m["count"] for m in page["members"]}


async def converged(running: list[Service], held: list[Service]) -> float:
    """Seconds until every running node shows exactly the holders of running nodes."""
    alive = {n.name for n in running}
    want = {holder(n): 1 for n in held if n.name in alive}
    start = time.monotonic()

    last: dict[str, dict[str, int]] = {}

    def agreed() -> bool:
        last.update({node.name: shown(node) for node in running})
        return all(seen == want for seen in last.values())

    try:
        await until(agreed, CONVERGE_WITHIN, f"presence on every node is exactly {sorted(want)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last shown: {last}") from None
    return time.monotonic() - start
