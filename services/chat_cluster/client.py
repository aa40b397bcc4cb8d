"""``chat-cluster send`` and ``tail``: small clients of a chat node's REST and WebSocket API."""

import asyncio
import json
import sys
import urllib.error
import urllib.request

import websockets

from chat_cluster.settings import ClientSettings


def _headers(settings: ClientSettings) -> dict[str, str]:
    token = settings.bearer()
    return {"authorization": f"Bearer {token}"} if token else {}


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": "http_error", "detail": str(exc)}


async def send(settings: ClientSettings, text: str, msg_id: str | None) -> int:
    body: dict[str, object] = {"channel": settings.channel, "text": text}
    headers = _headers(settings)
    if not headers:
        body["user"] = settings.user  # a node in --no-auth mode takes the name as given
    if msg_id:
        body["id"] = msg_id
    unreachable = []
    for node in settings.nodes():
        url = node + "/messages"
        try:
            status, answer = await asyncio.to_thread(_post, url, json.dumps(body).encode(), headers)
        except (urllib.error.URLError, OSError) as exc:
            unreachable.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        if status != 201:
            print(
                f"chat-cluster send: {answer.get('error')}: {answer.get('detail')}",
                file=sys.stderr,
            )
            return 1
        duplicate = str(answer["duplicate"]).lower()
        print(f"seq={answer['seq']} id={answer['id']} duplicate={duplicate}")
        return 0
    print(f"chat-cluster send: cannot reach {'; '.join(unreachable)}", file=sys.stderr)
    return 1


async def tail(settings: ClientSettings, after: int | None, count: int | None, raw: bool) -> int:
    node = settings.nodes()[0]
    url = node.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
    join: dict[str, object] = {"op": "join", "channel": settings.channel}
    if after is not None:
        join["after"] = after
    seen = 0
    try:
        async with websockets.connect(
            url, open_timeout=10, additional_headers=_headers(settings)
        ) as ws:
            await ws.send(json.dumps(join))
            async for data in ws:
                frame = json.loads(data)
                if frame["op"] == "token_expiring" and settings.token is None:
                    # A token we minted: mint the next one, the socket stays open.
                    fresh = settings.bearer()
                    if fresh:
                        await ws.send(json.dumps({"op": "refresh", "token": fresh}))
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
