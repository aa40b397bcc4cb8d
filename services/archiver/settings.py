"""The archiver's settings, read once at the entry point and passed down."""

from dataclasses import dataclass, field

from chatlog import StreamSpec


@dataclass(frozen=True)
class ArchiverSettings:
    host: str = "127.0.0.1"
    port: int = 8100
    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream: StreamSpec = field(default_factory=StreamSpec)
    timeout: float = 5.0
    export_page: int = 500
