"""``chat-cluster``: up, down, status, node, archiver, ensure-stream, verify, creds, keygen,
token, grant, revoke, send, tail, nats-server.

Every flag of the services comes from their settings dataclasses (:mod:`options`):
``--help`` shows each default and its environment variable.
"""

import argparse
import asyncio
import dataclasses
import json
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import options
from archiver.settings import ArchiverSettings
from chat.settings import NodeSettings
from chat_cluster.credentials import Credentials
from chat_cluster.natsserver import NatsServerError, checked_binary, resolve_binary
from chat_cluster.settings import (
    ClientSettings,
    DirSettings,
    EnsureSettings,
    GrantSettings,
    TokenSettings,
    UpSettings,
    VerifySettings,
    local_nats,
    local_nodes,
    minted,
    role,
)
from chatlog import LogError, LogSettings, StreamConflict
from chatlog.errors import Forbidden
from chatlog.roles import ROLES
from options import ConfigError

ENSURE_TIMEOUT = 120.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-cluster", description="A chat service replicated through NATS JetStream."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, settings: type | None = None) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help, description=help)
        if settings is not None:
            options.add_flags(cmd, settings)
        return cmd

    command("up", "run NATS, the archiver and N chat nodes on this machine", UpSettings)
    command("down", "stop the cluster `chat-cluster up` runs in --data-dir", DirSettings)
    command(
        "status",
        "readiness, applied seq, lag and connections of the services `up` runs",
        DirSettings,
    )
    command("node", "run one chat node", NodeSettings)
    command("archiver", "run the archiver", ArchiverSettings)
    ensure = command(
        "ensure-stream",
        "create the CHAT stream (or check the existing one) and print it; retries until NATS "
        "and JetStream answer or --timeout passes",
        EnsureSettings,
    )
    ensure.add_argument(
        "--timeout",
        type=float,
        default=ENSURE_TIMEOUT,
        help=f"seconds to keep trying (default: {ENSURE_TIMEOUT:g})",
    )

    command(
        "verify",
        "compare every node's replica with the log (the digest at each node's applied seq); "
        "exit 1 naming each node and the first seq that differs",
        VerifySettings,
    )
    creds = command(
        "creds",
        "print the path of a role's NATS credentials in a local cluster's data directory "
        "(an nkey seed file: `nats --nkey PATH`, NATS_CREDS=PATH)",
        DirSettings,
    )
    creds.add_argument("role", type=role, help=f"one of {', '.join(ROLES)}")

    token = command(
        "token",
        "print a signed user token, minted with a local cluster's signing key (production "
        "tokens come from your identity provider)",
        TokenSettings,
    )
    token.add_argument("--user", required=True, help="the token's subject: the sender shown")
    token.add_argument("--name", default=None, help="a display name (default: none)")
    token.add_argument(
        "--read", action="append", default=[], metavar="PATTERN",
        help="channels it may read: a name or a pattern such as 'room-*' (repeatable)",
    )  # fmt: skip
    token.add_argument(
        "--send", action="append", default=[], metavar="PATTERN",
        help="channels it may send to (repeatable)",
    )  # fmt: skip
    token.add_argument("--admin", action="store_true", help="every channel, and grants")

    command(
        "keygen",
        "generate an Ed25519 token signing key and its JWKS in <data-dir>/auth (kept if "
        "there); give the JWKS to the services (JWKS_FILE, the chart's auth.jwksSecret)",
        DirSettings,
    )

    for name, what in (("grant", "give"), ("revoke", "take back")):
        cmd = command(
            name,
            f"{what} a user read and/or send on one channel (the grants bucket beside the "
            "log; every node applies it within a second), with admin NATS credentials",
            GrantSettings,
        )
        cmd.add_argument("user")
        cmd.add_argument("channel", type=_channel)
        cmd.add_argument(
            "what",
            choices=("read", "send", "both"),
            nargs="?" if name == "revoke" else None,
            default="both",
        )

    send = command("send", "send a message through a chat node", ClientSettings)
    send.add_argument("text")
    send.add_argument(
        "--id", default=None, help="message id; retries with it are idempotent (default: new)"
    )

    tail = command("tail", "print a channel's messages as they arrive", ClientSettings)
    tail.add_argument("--after", type=int, default=None, help="resume after this seq")
    tail.add_argument("--count", type=int, default=None, help="exit after this many messages")
    tail.add_argument("--json", action="store_true", help="print frames as JSON lines")

    ns = command("nats-server", "the pinned nats-server: --version, or run it with arguments")
    ns.add_argument("--version", action="store_true")
    ns.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    # Read by the ASGI instrumentation (server spans, when tracing is on) at its first use:
    # the stable HTTP conventions for span attributes. Only the entry point writes the
    # environment; everything below reads it once, here.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    from chat_cluster.local import ClusterError

    try:
        args = build_parser().parse_args(argv)
        sys.exit(_run(args, os.environ))
    except (ConfigError, NatsServerError, ClusterError) as exc:
        print(f"chat-cluster: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def node_settings(args: argparse.Namespace, env: Mapping[str, str]) -> NodeSettings:
    settings = options.build(NodeSettings, args, env)
    if not settings.node_id:
        settings = dataclasses.replace(settings, node_id=f"{socket.gethostname()}:{settings.port}")
    return settings


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    command = args.command
    if command == "node":
        return _node(node_settings(args, env), env)
    if command == "archiver":
        return _archiver(options.build(ArchiverSettings, args, env), env)
    if command == "up":
        from chat_cluster.local import LocalCluster

        return LocalCluster(options.build(UpSettings, args, env)).run()
    if command == "down":
        from chat_cluster.local import down

        return down(options.build(DirSettings, args, env).data_dir)
    if command == "status":
        from chat_cluster.status import show

        return show(options.build(DirSettings, args, env).data_dir)
    if command == "creds":
        path = Credentials(Path(options.build(DirSettings, args, env).data_dir) / "creds")
        found = path.path(args.role)
        if not found.exists():
            print(f"chat-cluster creds: no {found}; start `chat-cluster up` there once")
            return 1
        print(found.resolve())
        return 0
    if command == "verify":
        return _verify(options.build(VerifySettings, args, env))
    if command == "ensure-stream":
        return _ensure_stream(options.build(EnsureSettings, args, env), args.timeout)
    if command in ("send", "tail"):
        from chat_cluster import client

        settings = options.build(ClientSettings, args, env)
        if command == "send":
            return asyncio.run(client.send(settings, args.text, args.id))
        return asyncio.run(client.tail(settings, args.after, args.count, args.json))
    if command == "nats-server":
        return _nats_server(args)
    if command == "keygen":
        from auth import keys

        directory = Path(options.build(DirSettings, args, env).data_dir) / "auth"
        keys.generate(directory)
        print(directory / keys.JWKS)
        return 0
    if command == "token":
        return _token(options.build(TokenSettings, args, env), args)
    if command in ("grant", "revoke"):
        return _grant(options.build(GrantSettings, args, env), args)
    raise AssertionError(command)


def _channel(raw: str) -> str:
    from chatlog import InvalidInput, check_channel

    try:
        return check_channel(raw)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.detail) from exc


def _token(settings: TokenSettings, args: argparse.Namespace) -> int:
    from auth import keys

    path = Path(settings.data_dir) / "auth" / keys.SIGNING_KEY
    if not path.exists():
        raise ConfigError(f"no signing key at {path}; start `chat-cluster up` there once")
    print(
        keys.mint(
            keys.load(path),
            args.user,
            ttl=settings.ttl,
            read=tuple(args.read),
            send=tuple(args.send),
            admin=args.admin,
            name=args.name,
        )
    )
    return 0


def _grant(settings: GrantSettings, args: argparse.Namespace) -> int:
    from chat_cluster.admin import change_grant

    log = _local_log(Path(settings.data_dir), settings.log, "admin")
    read = args.what in ("read", "both")
    send = args.what in ("send", "both")
    try:
        grant = asyncio.run(
            change_grant(log, args.user, args.channel, read, send, args.command == "grant")
        )
    except LogError as exc:
        print(f"chat-cluster {args.command}: {exc.detail}", file=sys.stderr)
        return 1
    now = f"read={str(grant.read).lower()} send={str(grant.send).lower()}"
    print(f"{args.user} on {args.channel}: {now}")
    return 0


def _local_log(data: Path, log: LogSettings, role_name: str) -> LogSettings:
    """A local cluster's NATS URLs and the role's credentials, unless given."""
    if not log.has_credentials and (data / "creds" / f"{role_name}.nk").exists():
        log = dataclasses.replace(log, creds=str(data / "creds" / f"{role_name}.nk"))
    if log.nats_urls == LogSettings().nats_urls and local_nats(data):
        log = dataclasses.replace(log, nats_urls=local_nats(data))
    return log


def _node(settings: NodeSettings, env: Mapping[str, str]) -> int:
    import telemetry
    from chat.app import create_app
    from servicekit import logs, serve
    from servicekit.workers import Worker

    worker = Worker.from_env(env)
    if settings.workers > 1 and worker is None:
        from chat_cluster.processes import supervise

        logs.configure("chat-node", settings.log_level, node_id=settings.node_id)
        return supervise(sys.argv[1:], settings.workers, settings.host, settings.port, env)
    if worker is not None:  # each worker is a node of its own in logs, NATS and presence
        settings = dataclasses.replace(settings, node_id=f"{settings.node_id}/{worker.index}")
    logs.configure("chat-node", settings.log_level, node_id=settings.node_id)
    app = create_app(settings, telemetry.start("chat-node", settings.node_id, env), worker)
    node = app.state.node
    hub = node.hub
    serve.run(
        app,
        settings.host,
        settings.port,
        node.guard,
        grace=settings.grace,
        before_exit=lambda: hub.drain(settings.grace),
        worker=worker,
    )
    return 0


def _archiver(settings: ArchiverSettings, env: Mapping[str, str]) -> int:
    import telemetry
    from archiver.app import create_app
    from servicekit import logs, serve

    instance = f"{socket.gethostname()}:{settings.port}"
    logs.configure("archiver", settings.log_level, node_id=instance)
    app = create_app(settings, telemetry.start("archiver", instance, env))
    serve.run(app, settings.host, settings.port, app.state.guard)
    return 0


def _verify(settings: VerifySettings) -> int:
    from chat_cluster.verify import verify

    data = Path(settings.data_dir)
    nodes = [(url, url) for url in settings.nodes]
    if not nodes:
        nodes = [(f"node-{i}", url) for i, url in enumerate(local_nodes(data), 1)]
    if not nodes:
        raise ConfigError(f"no --nodes given and no running cluster in {data}")
    log = _local_log(data, settings.log, "archiver")
    token = settings.token or minted(data, "chat-cluster verify", admin=True)
    return asyncio.run(verify(log, nodes, settings.records, token))


def _ensure_stream(settings: EnsureSettings, timeout: float) -> int:
    from chat_cluster.admin import ensure_stream
    from servicekit import logs

    logs.configure("ensure-stream", "WARNING")
    try:
        info = asyncio.run(
            ensure_stream(settings.log, settings.stream, timeout, "chat-cluster ensure-stream")
        )
    except (StreamConflict, Forbidden) as exc:
        print(f"chat-cluster ensure-stream: {exc}", file=sys.stderr)
        return 1
    except LogError as exc:
        print(f"chat-cluster ensure-stream: gave up after {timeout:g}s: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(dataclasses.asdict(info)))
    return 0


def _nats_server(args: argparse.Namespace) -> int:
    if args.version:
        path, version = checked_binary()
        print(f"{path}\nnats-server {version}")
        return 0
    path = resolve_binary()
    os.execv(path, [str(path), *args.args])
