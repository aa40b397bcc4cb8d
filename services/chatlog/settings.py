"""Where the log is and how long its calls may take: one settings object per service."""

from dataclasses import dataclass

from chatlog.stream import StreamSpec
from options import nested, setting

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
_SCHEMES = ("nats://", "tls://")


def nats_urls(raw: str) -> tuple[str, ...]:
    """``NATS_URL``: one URL or a comma-separated list of them."""
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    if not urls:
        raise ValueError("no NATS URL given")
    for url in urls:
        if not url.startswith(_SCHEMES):
            raise ValueError(f"NATS URL {url!r} must start with nats:// or tls://")
    return urls


@dataclass(frozen=True)
class LogSettings:
    nats_urls: tuple[str, ...] = setting(
        (DEFAULT_NATS_URL,),
        flag="--nats-url",
        env="NATS_URL",
        parse=nats_urls,
        help="NATS server URL, or a comma-separated list of them",
    )
    publish_timeout: float = 5.0
    """From publish to PubAck; a send that takes longer answers 503 (nothing promised)."""
    api_timeout: float = 2.0
    """Stream info, consumer creation, direct gets: short, so a watchdog recovers quickly
    while a stream elects a new leader (those calls hang meanwhile)."""
    stream: StreamSpec = nested(StreamSpec)
