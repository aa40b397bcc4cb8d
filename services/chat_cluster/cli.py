"""``chat-cluster``: up, status, node, archiver, ensure-stream, send, tail, nats-server."""

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

from chat_cluster import client, config
from chat_cluster.natsserver import NatsServerError, checked_binary, resolve_binary


def _parser() -> argparse.ArgumentParser:
    env = config.environ()
    parser = argparse.ArgumentParser(
        prog="chat-cluster", description="A chat service replicated through NATS JetStream."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run NATS, the archiver and N chat nodes on this machine")
    up.add_argument("--nodes", type=int, default=3, help="chat nodes to start (default 3)")
    up.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="move every port: nodes B+1.., archiver B+100, NATS B+200.. "
        "(default: nodes 8001.., archiver 8100, NATS 4222)",
    )
    up.add_argument("--data-dir", default="./.chat-cluster", help="NATS store and logs")
    up.add_argument(
        "--nats-cluster", type=int, choices=(1, 3), default=1, help="1 server (R1) or 3 (R3)"
    )

    node = sub.add_parser("node", help="run one chat node")
    config.add_node_flags(node, env)

    archiver = sub.add_parser("archiver", help="run the archiver")
    config.add_service_flags(archiver, env, 8100)

    status = sub.add_parser(
        "status", help="readiness, applied seq, lag and connections of the services `up` runs"
    )
    status.add_argument("--data-dir", default="./.chat-cluster", help="where `up` keeps its data")

    ensure = sub.add_parser(
        "ensure-stream",
        help="create the CHAT stream (or check the existing one) and print it; retries "
        "until NATS and JetStream answer or --timeout passes",
    )
    config.add_stream_flags(ensure, env)
    ensure.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")

    send = sub.add_parser("send", help="send a message through a chat node")
    send.add_argument("text")
    send.add_argument("--channel", default="default-channel")
    send.add_argument("--node", default="http://127.0.0.1:8001", help="chat node base URL")
    send.add_argument("--user", default=None)
    send.add_argument("--id", default=None, help="message id (retries with it are idempotent)")

    tail = sub.add_parser("tail", help="print a channel's messages as they arrive")
    tail.add_argument("--channel", default="default-channel")
    tail.add_argument("--node", default="http://127.0.0.1:8001", help="chat node base URL")
    tail.add_argument("--after", type=int, default=None, help="resume after this seq")
    tail.add_argument("--count", type=int, default=None, help="exit after this many messages")
    tail.add_argument("--json", action="store_true", help="print frames as JSON lines")

    ns = sub.add_parser(
        "nats-server", help="the pinned nats-server: --version, or run it with these arguments"
    )
    ns.add_argument("--version", action="store_true")
    ns.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = _parser().parse_args(argv)
        sys.exit(_run(args))
    except (config.ConfigError, NatsServerError) as exc:
        print(f"chat-cluster: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _run(args: argparse.Namespace) -> int:
    if args.command == "node":
        return _node(args)
    if args.command == "archiver":
        return _archiver(args)
    if args.command == "up":
        from chat_cluster.local import LocalCluster, Ports

        ports = Ports.for_base(args.base_port, args.nodes, args.nats_cluster)
        return LocalCluster(ports, args.data_dir).run()
    if args.command == "status":
        from chat_cluster.status import show

        return show(args.data_dir)
    if args.command == "ensure-stream":
        return asyncio.run(
            client.ensure_stream(
                config.nats_urls(args.nats_url), config.stream_spec(args), args.timeout
            )
        )
    if args.command == "send":
        return asyncio.run(client.send(args.node, args.channel, args.text, args.user, args.id))
    if args.command == "tail":
        return asyncio.run(client.tail(args.node, args.channel, args.after, args.count, args.json))
    if args.command == "nats-server":
        return _nats_server(args)
    raise AssertionError(args.command)


def _node(args: argparse.Namespace) -> int:
    import telemetry
    from chat.app import create_app
    from servicekit import logs, serve

    settings = config.node_settings(args)
    logs.configure("chat-node", args.log_level, node_id=settings.node_id)
    app = create_app(settings, telemetry.start("chat-node", settings.node_id, config.environ()))
    hub = app.state.hub
    serve.run(
        app,
        settings.host,
        settings.port,
        grace=settings.grace,
        before_exit=lambda: hub.drain(settings.grace),
    )
    return 0


def _archiver(args: argparse.Namespace) -> int:
    import telemetry
    from archiver.app import create_app
    from servicekit import logs, serve

    settings = config.archiver_settings(args)
    instance = f"{socket.gethostname()}:{settings.port}"
    logs.configure("archiver", args.log_level, node_id=instance)
    serve.run(
        create_app(settings, telemetry.start("archiver", instance, config.environ())),
        settings.host,
        settings.port,
    )
    return 0


def _nats_server(args: argparse.Namespace) -> int:
    if args.version:
        path, version = checked_binary()
        print(f"{path}\nnats-server {version}")
        return 0
    path = resolve_binary()
    os.execv(path, [str(path), *args.args])
