"""The services' one error base, with the HTTP status and stable code each maps to."""

from chatlog import InvalidInput, LogError, LogRejected, LogUnavailable, StreamConflict


class ServiceError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def bad_request(code: str, detail: str) -> ServiceError:
    return ServiceError(400, code, detail)


def from_log_error(exc: LogError) -> ServiceError:
    """How a log error reaches a client. LogUnavailable on a send means nothing is promised."""
    if isinstance(exc, InvalidInput):
        return ServiceError(400, exc.code, exc.detail)
    if isinstance(exc, LogUnavailable):
        return ServiceError(503, exc.code, exc.detail)
    if isinstance(exc, LogRejected | StreamConflict):
        return ServiceError(502, exc.code, exc.detail)
    return ServiceError(500, exc.code, exc.detail)
