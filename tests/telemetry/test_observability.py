"""Traces across the log, /metrics with correct values, and the lag going back to 0.

Spans go to an in-memory exporter installed as the global TracerProvider (what an
operator's OTLP exporter would receive); metrics are read the way Prometheus reads
them, through /metrics, and parsed with Prometheus's own text parser."""

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import telemetry
from archiver.app import create_app as create_archiver
from archiver.settings import ArchiverSettings
from chat.app import create_app
from chat.metrics import NodeMetrics
from chat.node import Node
from chat_cluster.natsserver import NatsServer
from chatlog import ChatLog
from chatlog.roles import ARCHIVER, NODE
from tests.support import (
    AUTH,
    client,
    log_settings,
    node_settings,
    said,
    samples,
    until,
    wait_until,
)

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's TracerProvider can be set once; the first module to ask sets it."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def value(
    page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return page[name, tuple(sorted(labels.items()))]


def ready(client: TestClient[Any]) -> None:
    wait_until(lambda: client.get("/readyz").status_code == 200, what="node ready")


def find(spans: InMemorySpanExporter, name: str, **attributes: object) -> ReadableSpan:
    def matching() -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.name == name
            and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
        ]

    found = wait_until(matching, what=f"span {name} {attributes}")
    assert len(found) == 1, found
    return found[0]


def test_a_send_on_node_a_and_its_apply_on_node_b_are_one_trace(
    nats: NatsServer, spans: InMemorySpanExporter
) -> None:
    app_a = create_app(node_settings(nats, node_id="a"))
    app_b = create_app(node_settings(nats, node_id="b"))
    with client(app_a) as a, client(app_b) as b:
        ready(a)
        ready(b)
        seq = a.post("/messages", json={"text": "traced", "channel": "t"}).json()["seq"]
        assert b.get("/messages", params={"channel": "t", "min_seq": seq}).status_code == 200

        publish = find(spans, "chat.publish", **{"chat.seq": seq})
        send = next(
            s for s in spans.get_finished_spans() if s.context.span_id == publish.parent.span_id
        )  # type: ignore[union-attr]
        assert send.name == "chat.send"
        http_span = next(
            s
            for s in spans.get_finished_spans()
            if s.context.span_id == send.parent.span_id  # type: ignore[union-attr]
        )
        assert http_span.kind == trace.SpanKind.SERVER  # Litestar's middleware: the root

        for node in ("a", "b"):
            apply = find(spans, "chat.apply", **{"chat.seq": seq, "chat.node_id": node})
            assert apply.context.trace_id == publish.context.trace_id
            assert apply.parent is not None and apply.parent.span_id == publish.context.span_id
            assert apply.parent.is_remote  # it came through the NATS headers
            deliver = find(spans, "chat.deliver", **{"chat.node_id": node})
            assert deliver.parent is not None and deliver.parent.span_id == apply.context.span_id

        # a WebSocket send on b: its own root span, applied on a in the same trace
        spans.clear()
        with b.websocket_connect("/ws") as ws:
            ws.send_json({"op": "send", "channel": "t", "text": "over ws", "id": "ws-1"})
            ack = ws.receive_json(timeout=10)
        assert ack["op"] == "ack"
        send = find(spans, "chat.send")
        assert send.parent is None
        apply = find(spans, "chat.apply", **{"chat.seq": ack["seq"], "chat.node_id": "a"})
        assert apply.context.trace_id == send.context.trace_id

    # a node that starts later replays both messages without a span for either
    with client(create_app(node_settings(nats, node_id="late"))) as late:
        ready(late)
        assert (
            late.get("/messages", params={"channel": "t"}).json()["messages"][-1]["seq"]
            == (ack["seq"])
        )
    assert not [
        s for s in spans.get_finished_spans() if (s.attributes or {}).get("chat.node_id") == "late"
    ]


def test_metrics_parse_and_count_known_traffic(nats: NatsServer, chatlog: ChatLog) -> None:
    with client(create_app(node_settings(nats, node_id="m"))) as node:
        ready(node)
        for i in range(7):
            node.post("/messages", json={"text": f"m{i}", "channel": "a"}).json()["seq"]
        dup = node.post("/messages", json={"text": "m0", "channel": "a", "id": "same"}).json()
        assert node.post("/messages", json={"text": "again", "channel": "a", "id": "same"}).json()[
            "duplicate"
        ]
        asyncio.run(_publish_poison(nats))
        with node.websocket_connect("/ws") as ws:
            ws.send_json({"op": "join", "channel": "a", "after": 0})
            assert ws.receive_json(timeout=10)["op"] == "joined"
            got = [ws.receive_json(timeout=10)["seq"] for _ in range(8)]
            assert got[-1] == dup["seq"]
            stream_last = dup["seq"] + 1  # the poison entry after it
            node.get("/messages", params={"min_seq": stream_last})

            def page() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                response = node.get("/metrics")
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
                return samples(response.text)

            metrics = wait_until(
                lambda: (p := page()) and value(p, "chat_stream_last_seq") == stream_last and p,
                what="the watchdog to see the stream's last seq",
            )
            assert value(metrics, "chat_ws_connections") == 1
        assert value(metrics, "chat_replica_applied_seq") == stream_last
        assert value(metrics, "chat_replication_lag") == 0
        assert value(metrics, "chat_replication_lag_duration_seconds") == 0
        assert value(metrics, "chat_messages_applied_total") == 8
        assert value(metrics, "chat_messages_skipped_total", reason="bad_schema") == 1
        assert value(metrics, "chat_publish_duration_seconds_count") == 9  # the duplicate too
        assert value(metrics, "chat_publish_duplicates_total") == 1
        assert value(metrics, "chat_ws_joins_total") == 1
        assert value(metrics, "chat_ws_delivered_total") == 8
        assert value(metrics, "chat_ready") == 1 and value(metrics, "chat_nats_connected") == 1
        route = {"http_request_method": "POST", "http_route": "/messages"}
        count = "http_server_request_duration_seconds_count"
        assert value(metrics, count, **route, http_response_status_code="201") == 9


async def _publish_poison(nats: NatsServer) -> None:
    log = await ChatLog.open(log_settings(nats), "poison", NODE)
    await log.publish("a", b'{"text": ""}', "poison-1")
    await log.close()


def test_the_archiver_serves_metrics_by_route(nats: NatsServer, chatlog: ChatLog) -> None:
    settings = ArchiverSettings(log=log_settings(nats, ARCHIVER), auth=AUTH)
    with client(create_archiver(settings)) as archiver:
        wait_until(lambda: archiver.get("/readyz").status_code == 200, what="archiver ready")
        for _ in range(3):
            assert archiver.get("/messages/default-channel").status_code == 200
        assert archiver.get("/messages/bad channel!").status_code == 400
        page = samples(archiver.get("/metrics").text)
    counts = {
        dict(labels)["http_response_status_code"]: v
        for (name, labels), v in page.items()
        if name == "http_server_request_duration_seconds_count"
        and dict(labels).get("http_route") == "/messages/{channel}"
    }
    assert counts == {"200": 3, "400": 1}
    # probes and scrapes are not measured
    assert not any(
        "/readyz" in dict(labels).get("http_route", "")
        or "/metrics" in dict(labels).get("http_route", "")
        for (_, labels) in page
    )


async def test_lag_is_reported_while_behind_and_returns_to_zero(
    nats: NatsServer, chatlog: ChatLog
) -> None:
    settings = node_settings(nats, node_id="lagging", snapshot_every=0)
    tele = telemetry.start("chat-node", "lagging", {})
    node = Node.create(settings, tele.meter("chat"), tracing=False)
    NodeMetrics(tele.meter("chat"), node)
    follower, replica = node.follower, node.replica

    def page() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(telemetry.render(tele.reader.get_metrics_data()))

    async def run_until_applied(seq: int) -> "asyncio.Task[None]":
        task = asyncio.create_task(follower.run())
        await until(lambda: follower.ready and replica.applied >= seq, what=f"seq {seq}")
        return task

    first = (await chatlog.publish("a", said("one"), "one")).seq
    task = await run_until_applied(first)
    task.cancel()  # the node stops applying; the stream goes on
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for i in range(50):
        await chatlog.publish("a", json.dumps({"text": f"{i}"}).encode(), f"later-{i}")
    await follower.refresh()  # what the watchdog does every second
    behind = page()
    assert value(behind, "chat_replication_lag") == 50
    assert value(behind, "chat_replica_applied_seq") == first
    assert value(behind, "chat_replication_lag_duration_seconds") > 0

    task = await run_until_applied(first + 50)
    try:
        caught_up = page()
        assert value(caught_up, "chat_replication_lag") == 0
        assert value(caught_up, "chat_replication_lag_duration_seconds") == 0
        assert value(caught_up, "chat_replica_applied_seq") == first + 50
        assert value(caught_up, "chat_consumer_resets_total") == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await node.chatlog.close()
