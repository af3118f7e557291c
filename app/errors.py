"""One error shape for every 4xx/5xx: ``{"error": {"code", "message", "field"}}``.

The codes and their statuses are ``core/errors.py``; this module turns every failure of a request
into that shape. A 429 or 503 carries ``Retry-After``, a 401 ``WWW-Authenticate``. No traceback ever leaves
the server: anything unexpected is logged and answered as ``internal``.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import ErrorCode, ServiceError, status_of
from core.methods import METHODS

log = logging.getLogger(__name__)


def error_response(
    code: ErrorCode, message: str, field: str | None = None, retry_after_s: float | None = None
) -> JSONResponse:
    status = status_of(code)
    headers = None
    if status.http in (429, 503):
        wait = retry_after_s if retry_after_s is not None else status.retry_after_s or 5
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
    if status.http == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="xai-service"'}
    body = {"error": {"code": code.value, "message": message, "field": field}}
    return JSONResponse(body, status_code=status.http, headers=headers)


def field_path(location: tuple | list, prefix: str = "") -> str | None:
    """A pydantic error location as a field path: ``methods[0].params.steps``.

    Where the request reached it, the transport (body, query), union branch tags (``TopK``,
    ``list[int]``) and the method name that picked a method's call model are left out.
    """
    path = prefix
    previous: object = None
    for part in location:
        text = str(part)
        skip = text in ("body", "query", "path", "form") or "[" in text or text[:1].isupper()
        if skip or (isinstance(previous, int) and text in METHODS):
            previous = part
            continue
        path += f"[{text}]" if isinstance(part, int) or text.isdigit() else (f".{text}" if path else text)
        previous = part
    return path or None


def classify(errors: list[dict], prefix: str = "") -> ServiceError:
    """The most specific of pydantic's errors (the deepest location) as a :class:`ServiceError`."""
    best = max(errors, key=lambda error: len(field_path(error.get("loc", ())) or ""))
    field = field_path(best.get("loc", ()), prefix)
    kind = best.get("type", "")
    if kind in ("union_tag_invalid", "union_tag_not_found") and field and field.split(".")[-1].startswith("methods["):
        field = f"{field}.name"
        if kind == "union_tag_invalid":
            tag = best.get("ctx", {}).get("tag")
            return ServiceError(ErrorCode.unknown_method, f"unknown method {tag!r}; see GET /methods", field)
        return ServiceError(ErrorCode.invalid_request, f"{field}: a method needs a name (see GET /methods)", field)
    message = best.get("msg", "invalid value")
    message = f"{field}: {message}" if field else message
    code = ErrorCode.invalid_parameter if field and ".params" in field else ErrorCode.invalid_request
    return ServiceError(code, message, field)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.code, error.message, error.field, error.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        failure = classify(list(error.errors()))
        return error_response(failure.code, failure.message, failure.field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 413:  # the body limit (app/main.py), met while the body streamed
            limit = request.app.state.settings.max_request_bytes
            message = f"the request body is larger than the limit of {limit} bytes; nothing of it was kept"
            return error_response(ErrorCode.payload_too_large, message, "body")
        code = {404: ErrorCode.not_found, 405: ErrorCode.method_not_allowed}.get(
            error.status_code, ErrorCode.invalid_request
        )
        # 400: Starlette's multipart parser refused the body; 404: no route; 405: the route has no such method
        field = {400: "body", 404: "path", 405: "method"}.get(error.status_code)
        body = {"error": {"code": code.value, "message": str(error.detail), "field": field}}
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(RedisError)
    async def store_unreachable(request: Request, error: RedisError) -> JSONResponse:
        log.warning("job store unreachable on %s %s: %s", request.method, request.url.path, error)
        return error_response(ErrorCode.unavailable, "the job store is unreachable; try again later")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ErrorCode.internal, "the server failed to handle the request")
