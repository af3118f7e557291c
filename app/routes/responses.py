"""The error responses routes declare in the OpenAPI document."""

from __future__ import annotations

from pydantic import BaseModel

from core.contract import ErrorInfo


class ErrorBody(BaseModel):
    error: ErrorInfo


ERRORS: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in [
        (400, "A body that cannot be parsed as multipart (too many fields or files, a broken part)"),
        (401, "No API key, or one that is not accepted (when the service asks for keys)"),
        (403, "A browser page of an origin XAI_CORS_ORIGINS does not list (state-changing requests)"),
        (404, "Unknown model, method or job"),
        (413, "An image or the request is too large"),
        (415, "Neither JSON nor multipart"),
        (422, "Invalid request; the error names the field"),
        (429, "The API key's rate limit or its cap on jobs in flight (see Retry-After)"),
        (503, "The job queue is full or unreachable, or no worker serves the model (see Retry-After)"),
    ]
}
