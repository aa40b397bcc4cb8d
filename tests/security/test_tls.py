"""TLS between services and NATS (a chart option): with the CA, a node works; without it,
or trusting another CA, nothing connects. Certificates are made here, by a throwaway CA."""

from pathlib import Path

import pytest

from chat_cluster.credentials import Credentials
from chat_cluster.natsserver import NatsServer, Tls
from chatlog import ChatLog, LogSettings, LogUnavailable, StreamSpec
from chatlog.roles import ADMIN, NODE
from tests.deploy.certs import Ca
from tests.support import said, start_server


def write(directory: Path, ca: Ca) -> tuple[Path, Path, Path]:
    """The CA's certificate and a server certificate for 127.0.0.1 (issued by the test CA
    the chart's tests use too), as files: (ca, cert, key)."""
    issued = ca.issue("nats", ["127.0.0.1"])
    paths = tuple(directory / f"{ca.cert.serial_number}-{n}" for n in ("ca", "crt", "key"))
    for path, key in zip(paths, ("ca.crt", "tls.crt", "tls.key"), strict=True):
        path.write_text(issued[key])
    return paths  # type: ignore[return-value]


async def test_tls_with_the_right_ca_works_and_nothing_else_connects(
    nats_bin: Path, tmp_path: Path, creds: Credentials
) -> None:
    ca_path, cert, key = write(tmp_path, Ca.make("chat-ca"))
    other_ca, _, _ = write(tmp_path, Ca.make("someone-else"))
    server: NatsServer = start_server(nats_bin, tmp_path, creds, tls=Tls(cert, key))
    try:
        url = server.config.url
        settings = LogSettings(nats_urls=(url,), creds=str(creds.path(NODE)), tls_ca=str(ca_path))
        await ensure_streams_tls(server, creds, ca_path)
        chatlog = await ChatLog.open(settings, "tls node", NODE)
        try:
            ack = await chatlog.publish("room", said("over TLS"), "t1")
            assert ack.seq == 1
        finally:
            await chatlog.close()
        for bad in (
            LogSettings(nats_urls=(url,), creds=str(creds.path(NODE))),  # no TLS
            LogSettings(nats_urls=(url,), creds=str(creds.path(NODE)), tls_ca=str(other_ca)),
        ):
            with pytest.raises(LogUnavailable):
                await ChatLog.open(bad, "refused", NODE)
    finally:
        server.kill()


async def ensure_streams_tls(server: NatsServer, creds: Credentials, ca: Path) -> None:
    admin = await ChatLog.open(
        LogSettings(nats_urls=(server.config.url,), creds=str(creds.path(ADMIN)), tls_ca=str(ca)),
        "tls admin",
        ADMIN,
    )
    try:
        await admin.ensure_stream(StreamSpec())
    finally:
        await admin.close()
