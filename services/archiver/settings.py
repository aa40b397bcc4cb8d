"""The archiver's settings: every default, flag and environment variable of the archiver."""

from dataclasses import dataclass

from auth import AuthSettings
from chatlog import LogSettings
from options import nested, port, setting
from servicekit.connections import ConnectionSettings
from servicekit.logs import log_level


@dataclass(frozen=True)
class ArchiverSettings:
    host: str = setting("127.0.0.1", flag="--host", env="HOST", help="address to listen on")
    port: int = setting(8100, flag="--port", env="PORT", parse=port, help="port to listen on")
    log_level: str = setting(
        "INFO", flag="--log-level", env="LOG_LEVEL", parse=log_level,
        help="log level (JSON lines when stderr is not a terminal)",
    )  # fmt: skip
    log: LogSettings = nested(LogSettings)
    auth: AuthSettings = nested(AuthSettings)
    connections: ConnectionSettings = nested(ConnectionSettings)
    export_page: int = 500
    """Records read from the log per Direct Get batch while exporting."""
