"""TLS between services and NATS (a chart option): with the CA, a node works; without it,
or trusting another CA, nothing connects. Certificates are made here, by a throwaway CA."""

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chat_cluster.credentials import Credentials
from chat_cluster.natsserver import NatsServer, Tls
from chatlog import ChatLog, LogSettings, LogUnavailable, StreamSpec
from chatlog.roles import ADMIN, NODE
from tests.support import said, start_server


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(
    directory: Path, name: str
) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("nats"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_with_the_right_ca_works_and_nothing_else_connects(
    nats_bin: Path, tmp_path: Path, creds: Credentials
) -> None:
    ca_path, ca_key, ca = make_ca(tmp_path, "chat-ca")
    other_ca, _, _ = make_ca(tmp_path, "someone-else")
    cert, key = make_server_cert(tmp_path, ca_key, ca)
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
