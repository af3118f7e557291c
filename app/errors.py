"""One error shape for every 4xx/5xx: ``{"error": {"code", "message", "field"}}``.

Codes are stable strings clients can switch on; the HTTP status of each is decided here only.
No traceback ever leaves the server: anything unexpected is logged and answered as ``internal``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

STATUS = {
    "invalid_request": 422,
    "invalid_parameter": 422,
    "invalid_image": 422,
    "target_out_of_range": 422,
    "no_ood_head": 422,
    "unknown_model": 404,
    "unknown_method": 404,
    "unknown_layer": 422,
    "job_not_found": 404,
    "job_finished": 409,
    "timeout": 504,
    "map_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "queue_full": 503,
    "unavailable": 503,
    "internal": 500,
}


class ApiError(Exception):
    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field

    @property
    def status(self) -> int:
        return STATUS[self.code]


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


def field_path(location: tuple | list, prefix: str = "") -> str | None:
    """A pydantic error location as a field path: ``methods[0].params.steps``.

    Where the request reached it, the transport (body, query) and union branch tags
    (``TopK``, ``list[int]``) are left out.
    """
    path = prefix
    for part in location:
        text = str(part)
        if text in ("body", "query", "path", "form") or "[" in text or text[:1].isupper():
            continue
        path += f"[{text}]" if isinstance(part, int) or text.isdigit() else (f".{text}" if path else text)
    return path or None


def first_error(errors: list[dict], prefix: str = "") -> tuple[str | None, str]:
    """(field, message) of the most specific of pydantic's errors (the deepest location)."""
    best = max(errors, key=lambda error: len(field_path(error.get("loc", ())) or ""))
    field = field_path(best.get("loc", ()), prefix)
    message = best.get("msg", "invalid value")
    return field, f"{field}: {message}" if field else message


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(error.code, error.message, error.field), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        field, message = first_error(list(error.errors()))
        return JSONResponse(error_body("invalid_request", message, field), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid_request")
        return JSONResponse(error_body(code, str(error.detail)), status_code=error.status_code)

    @app.exception_handler(RedisError)
    async def store_unreachable(request: Request, error: RedisError) -> JSONResponse:
        log.warning("job store unreachable on %s %s: %s", request.method, request.url.path, error)
        return JSONResponse(error_body("unavailable", "the job store is unreachable; try again later"), 503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal", "the server failed to handle the request"), status_code=500)
