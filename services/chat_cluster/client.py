"""``chat-cluster send`` and ``tail``: small clients of a chat node's REST and WebSocket API."""

import asyncio
import json
import sys
import urllib.error
import urllib.request

import msgspec

from chat_cluster.settings import ClientSettings
from chatclient import AuthFailed, ChatClient, Disconnected, Left, Message
from chatclient.frames import Error


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
    """Follow a channel through :class:`chatclient.ChatClient`: on another node of the
    local cluster, without gap or duplicate, when the first goes away."""
    # A fixed CHAT_TOKEN, or one minted afresh each time the node asks for a new one.
    source = settings.token if settings.token is not None else settings.bearer
    seen = 0
    async with ChatClient(settings.nodes(), source, first=0) as client:
        await client.join(settings.channel, after)
        try:
            async for event in client.events():
                if raw:
                    print(json.dumps(msgspec.to_builtins(event)), flush=True)
                if isinstance(event, Message):
                    if not raw:
                        print(f"[{event.seq}] {event.user}: {event.text}", flush=True)
                    seen += 1
                    if count is not None and seen >= count:
                        return 0
                elif isinstance(event, Error | Left):
                    detail = event.detail if isinstance(event, Error) else event.reason
                    code = event.code if isinstance(event, Error) else "left"
                    print(f"chat-cluster tail: {code}: {detail}", file=sys.stderr)
                    return 1
                elif isinstance(event, Disconnected):
                    print(
                        f"chat-cluster tail: {event.node}: {event.reason or event.code}; "
                        f"retrying in {event.retry_in:.1f}s",
                        file=sys.stderr,
                    )
        except AuthFailed as exc:
            print(f"chat-cluster tail: {exc}", file=sys.stderr)
            return 1
    return 0
