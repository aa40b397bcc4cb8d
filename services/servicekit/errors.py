"""The services' one error base, and how a log error reaches a client: one table, used by
the HTTP exception handlers and by the WebSocket error frames alike."""

from chatlog import InvalidInput, LogError, LogFull, LogRejected, LogUnavailable, StreamConflict


class ServiceError(Exception):
    """An answer to a client: an HTTP status, a stable code, a sentence."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        """HTTP headers of the answer (Retry-After)."""


def bad_request(code: str, detail: str) -> ServiceError:
    return ServiceError(400, code, detail)


def problem_of(exc: ServiceError | LogError) -> ServiceError:
    """The client's view of an error. LogUnavailable on a send means nothing is promised."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InvalidInput):
        return ServiceError(400, exc.code, exc.detail)
    if isinstance(exc, LogFull):
        return ServiceError(507, exc.code, exc.detail)
    if isinstance(exc, LogUnavailable):
        return ServiceError(503, exc.code, exc.detail)
    if isinstance(exc, LogRejected | StreamConflict):
        return ServiceError(502, exc.code, exc.detail)
    return ServiceError(500, exc.code, exc.detail)


def unauthorized(detail: str) -> ServiceError:
    """401: no token, or one we cannot accept. The detail names which check failed."""
    return ServiceError(401, "unauthorized", detail)


def forbidden(detail: str) -> ServiceError:
    """403: a valid token whose holder may not do this."""
    return ServiceError(403, "forbidden", detail)
