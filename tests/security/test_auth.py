"""User identity, tried as an attacker would (issue 12): every attack against real node and
archiver processes with auth on, each asserted to fail safely: refused with the
documented status or frame, nothing stored, nothing delivered."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import ConnectionClosed, InvalidStatus

from auth import AuthSettings, Verifier, keys
from chat_cluster.local import Service
from chatlog.roles import PUBLISHER
from options import ConfigError
from servicekit.errors import ServiceError
from tests.support import (
    JWKS_FILE,
    PYTHON,
    ROOT,
    SIGNING_KEY,
    NodeProcs,
    all_messages,
    bearer,
    http,
    open_log,
    token,
    until,
    wait_until,
)


def ws_url(base: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + "/ws" + query


async def recv(ws: Any, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        return json.loads(await ws.recv())


async def closed_with(ws: Any, timeout: float = 10) -> int:
    """Read until the node closes the socket; its close code."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A token built by hand, as an attacker builds one."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = sign(head.encode()) if sign is not None else b""
    return head + "." + b64(signature)


def claims(user: str = "mallory", **more: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user, "iat": now, "exp": now + 600, "chat": {"admin": True}, **more}


def count(base: str, channel: str) -> int:
    return len(all_messages(base, channel))


@pytest.fixture
def node(procs: NodeProcs) -> Service:
    return procs.node("a")


def test_without_a_valid_token_nothing_is_read_or_stored(node: Service) -> None:
    """No token, garbage, alg none, another key, HS256 signed with our public key
    (algorithm confusion), expired, not yet valid: each 401 with a JSON body naming the
    reason, and none of the sends stored."""
    base = node.url
    public_pem = SIGNING_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = json.loads(JWKS_FILE.read_text())["keys"][0]["kid"]
    stranger = Ed25519PrivateKey.generate()
    now = int(time.time())
    attempts = {
        "garbage": ("not-a-jwt", "not a JWT"),
        "alg none": (forged({"alg": "none", "typ": "JWT"}, claims()), "alg 'none'"),
        "another key, our kid": (
            forged({"alg": "EdDSA", "kid": kid}, claims(), stranger.sign),
            "signature",
        ),
        "another key, its own kid": (keys.mint(stranger, "mallory", admin=True), "unknown key"),
        "HS256 with our public key": (
            forged(
                {"alg": "HS256", "kid": kid},
                claims(),
                lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
            ),
            "HS256",
        ),
        "expired": (token("mallory", admin=True, extra={"exp": now - 60}), "expired"),
        "not yet valid": (token("mallory", admin=True, extra={"nbf": now + 3600}), "not valid yet"),
    }
    for what, (bad, reason) in [("no token", (None, "no token")), *attempts.items()]:
        status, body = http(
            "POST", base + "/messages", {"channel": "room", "text": what}, token=bad
        )
        assert status == 401, (what, status, body)
        assert body["error"] == "unauthorized" and reason in body["detail"], (what, body)
        status, body = http("GET", base + "/messages?channel=room", token=bad)
        assert status == 401 and body["error"] == "unauthorized", (what, body)
    assert count(base, "room") == 0
    metrics = http("GET", base + "/metrics")[1].decode()
    refused = re.search(r'^chat_auth_tokens_total\{outcome="refused"\} (\S+)$', metrics, re.M)
    assert refused is not None and float(refused.group(1)) >= 2 * len(attempts), metrics


async def test_a_socket_without_a_token_gets_nothing(procs: NodeProcs) -> None:
    node = procs.node("a", "--ws-auth-timeout", "1")
    http("POST", node.url + "/messages", {"channel": "room", "text": "secret"})
    # A frame before the token: an error frame, then 4001; the join was never served.
    async with websockets.connect(ws_url(node.url)) as ws:
        await ws.send(json.dumps({"op": "join", "channel": "room", "after": 0}))
        frame = await recv(ws)
        assert frame["op"] == "error" and frame["code"] == "unauthorized", frame
        assert await closed_with(ws) == 4001
    # Silence: closed with 4001 after --ws-auth-timeout.
    async with websockets.connect(ws_url(node.url)) as ws:
        frame = await recv(ws, 5)
        assert frame["code"] == "unauthorized" and "within" in frame["detail"]
        assert await closed_with(ws) == 4001
    # A bad token in the auth frame, in the handshake header, in the query.
    async with websockets.connect(ws_url(node.url)) as ws:
        await ws.send(json.dumps({"op": "auth", "token": "garbage"}))
        assert (await recv(ws))["code"] == "unauthorized"
        assert await closed_with(ws) == 4001
    for connect in (
        websockets.connect(ws_url(node.url), additional_headers=bearer("garbage")),
        websockets.connect(ws_url(node.url, "?token=garbage")),
    ):
        async with connect as ws:
            assert (await recv(ws))["code"] == "unauthorized"
            assert await closed_with(ws) == 4001
    # The same socket with a good auth frame reads the channel.
    async with websockets.connect(ws_url(node.url)) as ws:
        await ws.send(json.dumps({"op": "auth", "token": token("ada", read=("room",))}))
        authed = await recv(ws)
        assert authed["op"] == "authed" and authed["user"] == "ada"
        await ws.send(json.dumps({"op": "join", "channel": "room", "after": 0}))
        assert (await recv(ws))["op"] == "joined"
        assert (await recv(ws))["text"] == "secret"


async def test_tokens_for_other_channels_read_and_send_nothing_there(procs: NodeProcs) -> None:
    node, archiver = procs.node("a"), procs.archiver()
    for channel in ("room-1", "secret"):
        http("POST", node.url + "/messages", {"channel": channel, "text": f"in {channel}"})
    ada = token("ada", read=("room-*",), send=("room-*",))
    assert http("GET", node.url + "/messages?channel=room-1", token=ada)[0] == 200
    for url in (
        node.url + "/messages?channel=secret",
        archiver.url + "/messages/secret",
        archiver.url + "/export/secret",
    ):
        status, body = http("GET", url, token=ada)
        assert status == 403 and body["error"] == "forbidden", (url, body)
    status, body = http(
        "POST", node.url + "/messages", {"channel": "secret", "text": "x"}, token=ada
    )
    assert status == 403 and body["error"] == "forbidden"
    read_only = token("ada", read=("room-*",))
    status, _ = http(
        "POST", node.url + "/messages", {"channel": "room-1", "text": "x"}, token=read_only
    )
    assert status == 403
    # Lists show only what the token may read.
    for url in (node.url + "/channels", archiver.url + "/channels"):
        status, listed = http("GET", url, token=ada)
        assert status == 200 and [c["channel"] for c in listed] == ["room-1"], (url, listed)
    # Over a socket: join and send refused with error frames, nothing delivered.
    async with websockets.connect(ws_url(node.url), additional_headers=bearer(ada)) as ws:
        await ws.send(json.dumps({"op": "join", "channel": "secret", "after": 0}))
        frame = await recv(ws)
        assert frame["op"] == "error" and frame["code"] == "forbidden", frame
        await ws.send(json.dumps({"op": "send", "channel": "secret", "text": "x", "id": "s1"}))
        frame = await recv(ws)
        assert frame == {**frame, "op": "error", "code": "forbidden", "id": "s1"}
    # Admin routes need the admin claim.
    status, _ = http("PUT", node.url + "/admin/grants/ada/secret", {"read": True}, token=ada)
    assert status == 403
    assert count(node.url, "secret") == 1 and count(node.url, "room-1") == 1


async def test_identity_is_stamped_and_cannot_be_claimed(node: Service) -> None:
    ada = token("ada", send=("room",), read=("room",), name="Ada Lovelace")
    body = {"channel": "room", "text": "hi"}
    status, sent = http("POST", node.url + "/messages", body, token=ada)
    assert status == 201
    # A body, or a frame, that names someone else is refused and nothing is stored.
    status, refused = http("POST", node.url + "/messages", {**body, "user": "admin"}, token=ada)
    assert status == 403 and refused["error"] == "user_mismatch", refused
    async with websockets.connect(ws_url(node.url), additional_headers=bearer(ada)) as ws:
        await ws.send(json.dumps({"op": "send", **body, "user": "root", "id": "w1"}))
        frame = await recv(ws)
        assert frame["op"] == "error" and frame["code"] == "user_mismatch" and frame["id"] == "w1"
    [message] = all_messages(node.url, "room")
    assert (message["user"], message["name"], message["id"]) == ("ada", "Ada Lovelace", sent["id"])


async def test_no_one_can_squat_another_users_ids(node: Service, nats: Any) -> None:
    mallory = token("mallory", send=("*",), read=("*",))
    victim = token("victim", send=("*",), read=("*",))
    url = node.url + "/messages"
    status, first = http(
        "POST", url, {"channel": "m", "text": "x", "id": "victim-msg-1"}, token=mallory
    )
    assert status == 201 and not first["duplicate"]
    # The same id by someone else (and in another channel, or the same one) is stored.
    for channel in ("v", "m"):
        status, sent = http(
            "POST", url, {"channel": channel, "text": "mine", "id": "victim-msg-1"}, token=victim
        )
        assert status == 201 and not sent["duplicate"], sent
    # A raw publisher may set any Nats-Msg-Id: it cannot compute a node's.
    publisher = await open_log(nats, PUBLISHER)
    try:
        conn = publisher._connection()
        await conn.nc.publish("chat.v", b"squat", headers={"Nats-Msg-Id": "victim-msg-2"})
        await conn.nc.flush()
    finally:
        await publisher.close()
    status, sent = http(
        "POST", url, {"channel": "v", "text": "two", "id": "victim-msg-2"}, token=victim
    )
    assert status == 201 and not sent["duplicate"]
    # The sender's own retry is still idempotent.
    status, again = http(
        "POST", url, {"channel": "v", "text": "two", "id": "victim-msg-2"}, token=victim
    )
    assert again["duplicate"] and again["seq"] == sent["seq"]
    await until(lambda: count(node.url, "v") == 3)
    texts = [(m["user"], m["text"]) for m in all_messages(node.url, "v")]
    assert texts == [("victim", "mine"), ("nats", "squat"), ("victim", "two")]


async def test_a_revoked_grant_ends_the_subscription_on_every_node(procs: NodeProcs) -> None:
    a, b, archiver = procs.node("a"), procs.node("b"), procs.archiver()
    bob = token("bob")  # no channels of his own: only grants
    status, body = http("PUT", a.url + "/admin/grants/bob/vip", {"read": True})
    assert status == 200 and body == {"user": "bob", "channel": "vip", "read": True, "send": False}
    http("POST", a.url + "/messages", {"channel": "vip", "text": "before"})
    http("POST", a.url + "/messages", {"channel": "lobby", "text": "lobby"})
    await until(lambda: http("GET", archiver.url + "/messages/vip", token=bob)[0] == 200)
    http("PUT", a.url + "/admin/grants/bob/lobby", {"read": True})
    socks = []
    for node in (a, b):
        ws = await websockets.connect(ws_url(node.url), additional_headers=bearer(bob))
        socks.append(ws)
        await until(
            lambda n=node: http("GET", n.url + "/messages?channel=vip", token=bob)[0] == 200
        )
        await ws.send(json.dumps({"op": "join", "channel": "vip", "after": 0}))
        assert (await recv(ws))["op"] == "joined"
        assert (await recv(ws))["text"] == "before"
        await ws.send(json.dumps({"op": "join", "channel": "lobby", "after": 0}))
        assert (await recv(ws))["op"] == "joined"
        assert (await recv(ws))["text"] == "lobby"
    try:
        status, _ = http("DELETE", a.url + "/admin/grants/bob/vip")
        assert status == 200
        revoked_at = time.monotonic()
        for ws in socks:
            frame = await recv(ws, 5)
            assert frame["op"] == "error" and frame["code"] == "forbidden", frame
            assert await recv(ws) == {"op": "left", "channel": "vip", "reason": "forbidden"}
        assert time.monotonic() - revoked_at < 1.0
        http("POST", a.url + "/messages", {"channel": "vip", "text": "after"})
        http("POST", a.url + "/messages", {"channel": "lobby", "text": "still here"})
        for ws in socks:  # the socket lives on; the revoked channel delivers nothing more
            assert (await recv(ws))["text"] == "still here"
        for url in (a.url + "/messages?channel=vip", b.url + "/messages?channel=vip"):
            assert http("GET", url, token=bob)[0] == 403
        await until(lambda: http("GET", archiver.url + "/messages/vip", token=bob)[0] == 403, 3)
    finally:
        for ws in socks:
            await ws.close()


def test_grant_and_revoke_from_the_command_line(procs: NodeProcs, nats: Any) -> None:
    node = procs.node("a")
    env = {
        **os.environ,
        "NATS_URL": nats.config.url,
        "NATS_CREDS": str(nats.creds.path("admin")),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "chat_cluster", *args],
            env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip

    bob = token("bob")
    done = cli("grant", "bob", "ops", "send")
    assert done.returncode == 0 and "read=false send=true" in done.stdout, done
    wait_until(
        lambda: (
            http("POST", node.url + "/messages", {"channel": "ops", "text": "x"}, token=bob)[0]
            == 201
        )
    )
    assert cli("revoke", "bob", "ops").returncode == 0
    wait_until(
        lambda: (
            http("POST", node.url + "/messages", {"channel": "ops", "text": "y"}, token=bob)[0]
            == 403
        )
    )
    bad = cli("grant", "bob", "no such channel!", "read")
    assert bad.returncode == 2 and "channel" in bad.stderr


async def test_browsers_from_other_sites_are_refused(procs: NodeProcs) -> None:
    node = procs.node("a", "--allowed-origins", "https://chat.example.com")
    url = node.url + "/messages"
    evil = {"origin": "https://evil.example"}
    status, body = http("POST", url, {"channel": "room", "text": "x"}, headers=evil)
    assert status == 403 and body["error"] == "origin_not_allowed"
    # A form or text/plain post (no CORS preflight) is refused before it is read.
    status, body = http(
        "POST", url, b'{"channel": "room", "text": "csrf"}',
        headers={"content-type": "text/plain", "origin": "https://chat.example.com"},
    )  # fmt: skip
    assert status == 415 and body["error"] == "unsupported_media_type"
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(ws_url(node.url), origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    # The allowed origin gets CORS answers and may open a socket; no page may by default.
    status, _ = http(
        "OPTIONS", url, token=None,
        headers={"origin": "https://chat.example.com", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization,content-type"},
    )  # fmt: skip
    assert status in (200, 204)
    async with websockets.connect(
        ws_url(node.url),
        origin="https://chat.example.com",
        additional_headers=bearer(),  # type: ignore[arg-type]
    ) as ws:
        await ws.send(json.dumps({"op": "join", "channel": "room", "after": 0}))
        assert (await recv(ws))["op"] == "joined"
    assert count(node.url, "room") == 0


async def test_a_socket_refreshes_its_token_or_is_closed(procs: NodeProcs) -> None:
    node = procs.node("a", "--auth-leeway", "0")
    short = token("ada", read=("*",), ttl=3)
    async with websockets.connect(ws_url(node.url)) as ws:
        await ws.send(json.dumps({"op": "auth", "token": short}))
        assert (await recv(ws))["op"] == "authed"
        asking = await recv(ws, 5)
        assert asking["op"] == "token_expiring" and 0 < asking["expires_in"] <= 3
        # Someone else's token is no refresh; the socket keeps its own.
        await ws.send(json.dumps({"op": "refresh", "token": token("eve", admin=True)}))
        assert (await recv(ws))["code"] == "forbidden"
        await ws.send(json.dumps({"op": "refresh", "token": token("ada", read=("*",), ttl=600)}))
        renewed = await recv(ws)
        assert renewed["op"] == "authed" and renewed["expires_at"] > time.time() + 500
        # The old token's deadline (3 s after it was minted) passes: nothing arrives, no
        # close; waiting for that absence is the point.
        with pytest.raises(TimeoutError):
            await recv(ws, 4)
        await ws.send(json.dumps({"op": "join", "channel": "room", "after": 0}))
        assert (await recv(ws))["op"] == "joined"
    async with websockets.connect(ws_url(node.url)) as ws:
        await ws.send(json.dumps({"op": "auth", "token": token("ada", ttl=2)}))
        assert (await recv(ws))["op"] == "authed"
        assert await closed_with(ws, 6) == 4002


async def test_audience_and_issuer_are_checked_when_configured(procs: NodeProcs) -> None:
    node = procs.node("a", "--auth-audience", "chat", "--auth-issuer", "https://id.example")
    right = {"aud": "chat", "iss": "https://id.example"}
    url = node.url + "/messages?channel=room"
    assert http("GET", url, token=token("ada", read=("*",), extra=right))[0] == 200
    for wrong in (
        {"aud": "other", "iss": right["iss"]},
        {"aud": "chat", "iss": "https://evil"},
        {},
    ):
        status, body = http("GET", url, token=token("ada", read=("*",), extra=wrong))
        assert status == 401, (wrong, body)


def test_a_node_without_keys_refuses_to_start_and_no_auth_is_explicit(
    tmp_path: Path, nats: Any
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("AUTH", "JWKS_FILE", "JWKS_URL")}
    env.update(nats.creds.env("node"))
    args = [PYTHON, "-m", "chat_cluster", "node", "--nats-url", nats.config.url, "--port", "0"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert "JWKS_FILE" in done.stderr and "--no-auth" in done.stderr, done.stderr
    bad = subprocess.run(
        args, env={**env, "AUTH": "maybe"}, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert bad.returncode == 2 and "AUTH" in bad.stderr


def test_anonymous_mode_warns_and_takes_names_as_given(procs: NodeProcs) -> None:
    node = procs.node("anon", "--no-auth")
    status, sent = http(
        "POST", node.url + "/messages", {"channel": "room", "text": "hi", "user": "zoe"}, token=None
    )
    assert status == 201
    # The ack comes from the log; the node's replica applies it a moment later.
    _, page = http("GET", f"{node.url}/messages?channel=room&min_seq={sent['seq']}", token=None)
    assert page["messages"][0]["user"] == "zoe"
    assert "AUTH=none" in Path(node.log_path).read_text()


# The verifier itself, with real keys and no network: key rotation and HS256.


async def test_keys_rotate_without_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    old = keys.load(keys.generate(directory))
    verifier = Verifier(AuthSettings(jwks_file=str(directory / keys.JWKS), unknown_kid_every=0))
    verifier.load()
    old_token = keys.mint(old, "ada")
    assert (await verifier.verify(old_token)).user == "ada"
    new = Ed25519PrivateKey.generate()
    (directory / keys.JWKS).write_text(json.dumps(keys.jwks_of(new)))
    assert (await verifier.verify(keys.mint(new, "bea"))).user == "bea"  # unknown kid: re-read
    with pytest.raises(ServiceError) as refused:
        await verifier.verify(old_token)  # the old key left the set: no cached pass
    assert refused.value.status == 401


async def test_hs256_only_with_the_shared_secret(tmp_path: Path) -> None:
    secret = "s" * 40
    verifier = Verifier(AuthSettings(hs256_secret=secret))
    good = forged(
        {"alg": "HS256"},
        claims("ada"),
        lambda d: hmac.new(secret.encode(), d, hashlib.sha256).digest(),
    )
    assert (await verifier.verify(good)).user == "ada"
    jwks_only = Verifier(AuthSettings(jwks_file=str(JWKS_FILE)))
    jwks_only.load()
    with pytest.raises(ServiceError) as refused:
        await jwks_only.verify(good)
    assert refused.value.status == 401 and "HS256" in refused.value.detail
    with pytest.raises(ConfigError):
        Verifier(AuthSettings(hs256_secret="short"))
    with pytest.raises(ConfigError, match="--no-auth"):
        Verifier(AuthSettings())


async def test_keys_come_from_a_jwks_url_and_rotate(tmp_path: Path) -> None:
    """An identity provider's JWKS URL (a local HTTP server here): read at start, read
    again for a key id it did not have; unreachable at start, the service refuses."""
    served = {"body": json.dumps(keys.jwks_of(SIGNING_KEY)).encode()}

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(served["body"])

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    try:
        verifier = Verifier(AuthSettings(jwks_url=url, unknown_kid_every=0))
        await asyncio.to_thread(verifier.load)
        assert (await verifier.verify(token("ada"))).user == "ada"
        rotated = Ed25519PrivateKey.generate()
        served["body"] = json.dumps(keys.jwks_of(rotated)).encode()
        assert (await verifier.verify(keys.mint(rotated, "bea"))).user == "bea"
    finally:
        server.shutdown()
        server.server_close()
    gone = Verifier(AuthSettings(jwks_url=url))
    with pytest.raises(ConfigError, match="JWKS_URL"):
        await asyncio.to_thread(gone.load)


async def test_a_socket_whose_key_left_the_set_is_closed(procs: NodeProcs, tmp_path: Path) -> None:
    """Rotation must reach sockets already open, not only new requests: a socket that
    authenticated with a key that was then removed is closed with 4001."""
    directory = tmp_path / "keys"
    old = keys.load(keys.generate(directory))
    jwks = directory / keys.JWKS
    node = procs.node("a", "--jwks-file", str(jwks), "--jwks-refresh", "0.5")
    eve = keys.mint(old, "eve", admin=True)
    async with websockets.connect(ws_url(node.url), additional_headers=bearer(eve)) as ws:
        await ws.send(json.dumps({"op": "join", "channel": "secret", "after": 0}))
        assert (await recv(ws))["op"] == "joined"
        jwks.write_text(json.dumps(keys.jwks_of(Ed25519PrivateKey.generate())))
        frame = await recv(ws, 10)
        assert frame["op"] == "error" and frame["code"] == "unauthorized", frame
        assert await closed_with(ws) == 4001
    assert http("GET", node.url + "/messages?channel=secret", token=eve)[0] == 401


def test_tokens_that_would_mislead_or_outlive_rotation_are_refused(node: Service) -> None:
    url = node.url + "/messages?channel=room"
    for bad, reason in (
        (token("ada", read=("*",), ttl=3 * 24 * 3600), "AUTH_MAX_LIFETIME"),
        (token("nats", read=("*",)), "reserved"),
        (token("anonymous", read=("*",)), "reserved"),
        (token("ada", read=("*",), name="Ada\u202e nimda"), "control"),
        (token("ada\nroot", read=("*",)), "control"),
        ("x" * 20_000, "longer"),
    ):
        status, body = http("GET", url, token=bad)
        assert status == 401 and reason in body["detail"], (reason, body)


async def test_malformed_input_is_a_clear_error(procs: NodeProcs) -> None:
    node, archiver = procs.node("a"), procs.archiver()
    url = node.url + "/messages"
    status, body = http("POST", url, b'{"channel": "room", "text": "\xff\xfe"}')
    assert status == 400 and body["error"] == "invalid_json", body
    status, body = http("POST", url, {"channel": "room", "text": "x", "id": "abc\n"})
    assert status == 400 and body["error"] == "invalid_field", body
    for where in (archiver.url + "/messages/room", url + "?channel=room"):
        sep = "&" if "?" in where else "?"
        status, body = http("GET", f"{where}{sep}after={2**64}")
        assert status == 400, (where, body)
    assert http("GET", node.url + "/schema/openapi.json", token=None)[0] == 404
    assert count(node.url, "room") == 0
    # Before its token, a socket's bad frame closes it at once.
    async with websockets.connect(ws_url(node.url)) as ws:
        await ws.send("{not json")
        assert (await recv(ws))["code"] == "invalid_json"
        assert await closed_with(ws, 2) == 4001
