"""One error shape for every 4xx/5xx: ``{"error": {"code", "message", "field"}}``.

Codes are stable strings clients can switch on; the HTTP status of each is decided here only.
No traceback ever leaves the server: anything unexpected is logged and answered as ``internal``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


def _field_path(location: tuple) -> str | None:
    parts = [str(part) for part in location if part not in ("body", "query", "path", "form")]
    path = ""
    for part in parts:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path or None


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(error.code, error.message, error.field), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        field = _field_path(tuple(first.get("loc", ())))
        message = first.get("msg", "invalid request")
        return JSONResponse(error_body("invalid_request", f"{field}: {message}" if field else message, field), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid_request")
        return JSONResponse(error_body(code, str(error.detail)), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal", "the server failed to handle the request"), status_code=500)
