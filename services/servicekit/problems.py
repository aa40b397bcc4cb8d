"""The HTTP exception handlers: every error becomes ``{"error": code, "detail": text}``."""

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from chatlog import LogError
from servicekit.errors import ServiceError, problem_of
from servicekit.shapes import Problem

log = logging.getLogger("servicekit.problems")

_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(
        Problem(error=code, detail=detail),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def service_error(_: Request[Any, Any, Any], exc: ServiceError | LogError) -> Response[Any]:
    problem = problem_of(exc)
    return _problem(problem.status, problem.code, problem.detail, problem.headers)


def validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    parts = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            parts.append(f"{item.get('key', '?')}: {item.get('message', '')}")
    return _problem(400, "invalid_query", "; ".join(parts) or str(exc.detail))


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code = _CODES.get(exc.status_code, "http_error")
    return _problem(exc.status_code, code, str(exc.detail))


def internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error", exc_info=exc)
    return _problem(500, "internal", "internal error")


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    ServiceError: service_error,
    LogError: service_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: internal_error,
}
