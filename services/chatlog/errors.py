"""Errors of the log boundary. nats-py and msgspec errors are translated here, never leaked."""


class LogError(Exception):
    """Base of every error the chatlog package raises."""

    code = "log_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(LogError):
    """Input rejected before NATS was touched; nothing was stored."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class LogUnavailable(LogError):
    """NATS or the stream cannot be reached now. For a publish: nothing is promised."""

    code = "log_unavailable"


class StreamMissing(LogUnavailable):
    """The stream does not exist (deleted, or not created yet): an admin creates it."""

    code = "stream_missing"


class LogRejected(LogError):
    """JetStream answered, and refused the request."""

    code = "log_rejected"


class StreamConflict(LogError):
    """The stream exists with a configuration we would have to change; we never do silently."""

    code = "stream_conflict"

    def __init__(self, field: str, have: object, want: object, stream: str = "CHAT") -> None:
        super().__init__(
            f"stream {stream} exists with {field}={have!r}, this service needs "
            f"{field}={want!r}; fix the configuration or migrate the stream by hand "
            "(docs/security.md)"
        )
        self.field = field


class StreamLimitUnknown(StreamConflict):
    """ensure-stream was given no byte limit and the NATS account has none to share out."""

    def __init__(self, detail: str) -> None:
        LogError.__init__(self, detail)
        self.field = "max_bytes"


class LogFull(LogRejected):
    """The log is at its byte limit: nothing was stored. Writes work again as soon as an
    operator raises the limit (``chat-cluster ensure-stream --log-max-bytes``)."""

    code = "log_full"


class Forbidden(LogRejected):
    """NATS refused this service's credentials: the connection (authorization violation)
    or the operation (permissions violation)."""

    code = "nats_forbidden"


class TailBroken(LogError):
    """The ordered delivery lost its place (gap, stall, consumer gone); resume from applied+1."""

    code = "tail_broken"
