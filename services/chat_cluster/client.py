"""``chat-cluster send`` and ``tail``: small clients of a chat node's REST and WebSocket API."""

import asyncio
import json
import sys
import urllib.error
import urllib.request

import websockets

from chatlog import ChatLog, LogError, StreamConflict, StreamSpec


def _post(url: str, body: bytes) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": "http_error", "detail": str(exc)}


async def send(node: str, channel: str, text: str, user: str | None, msg_id: str | None) -> int:
    body: dict[str, object] = {"channel": channel, "text": text}
    if user:
        body["user"] = user
    if msg_id:
        body["id"] = msg_id
    url = node.rstrip("/") + "/messages"
    try:
        status, answer = await asyncio.to_thread(_post, url, json.dumps(body).encode())
    except (urllib.error.URLError, OSError) as exc:
        print(f"chat-cluster send: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if status != 201:
        print(f"chat-cluster send: {answer.get('error')}: {answer.get('detail')}", file=sys.stderr)
        return 1
    print(f"seq={answer['seq']} id={answer['id']} duplicate={str(answer['duplicate']).lower()}")
    return 0


async def tail(node: str, channel: str, after: int | None, count: int | None, raw: bool) -> int:
    url = node.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
    join: dict[str, object] = {"op": "join", "channel": channel}
    if after is not None:
        join["after"] = after
    seen = 0
    try:
        async with websockets.connect(url, open_timeout=10) as ws:
            await ws.send(json.dumps(join))
            async for data in ws:
                frame = json.loads(data)
                if raw:
                    print(json.dumps(frame), flush=True)
                elif frame["op"] == "message":
                    print(f"[{frame['seq']}] {frame['user']}: {frame['text']}", flush=True)
                elif frame["op"] == "error":
                    print(f"error {frame['code']}: {frame['detail']}", file=sys.stderr)
                    return 1
                if frame["op"] == "message":
                    seen += 1
                    if count is not None and seen >= count:
                        return 0
    except (OSError, websockets.WebSocketException) as exc:
        print(f"chat-cluster tail: {url}: {exc}", file=sys.stderr)
        return 1
    return 0


async def ensure_stream(urls: tuple[str, ...], spec: StreamSpec, timeout: float) -> int:
    """Create or check the stream, retrying while NATS or JetStream is not up yet (a fresh
    cluster elects its meta leader after all servers start). A conflicting stream fails at
    once; any other log error is retried until ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            chatlog = await ChatLog.connect(
                list(urls), name="chat-cluster ensure-stream", spec=spec
            )
            try:
                info = await chatlog.ensure_stream()
            finally:
                await chatlog.close()
            print(json.dumps(info.__dict__))
            return 0
        except StreamConflict as exc:
            print(f"chat-cluster: {exc}", file=sys.stderr)
            return 1
        except LogError as exc:
            # NATS down, or JetStream still forming ("no suitable peers" until the meta
            # group has its quorum): the same errors the services retry at start.
            failure = exc
        if loop.time() >= deadline:
            print(f"chat-cluster: gave up after {timeout}s: {failure}", file=sys.stderr)
            return 1
        print(f"waiting for JetStream: {failure}", file=sys.stderr)
        await asyncio.sleep(1)
