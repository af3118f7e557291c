"""The error responses routes declare in the OpenAPI document, and the example requests."""

from __future__ import annotations

import base64
import json
from pathlib import Path

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


# A synchronous prediction also times out when the workers are busy past the wait cap.
PREDICT_ERRORS = ERRORS | {
    504: {"model": ErrorBody, "description": "No prediction within XAI_WAIT_CAP_S: the workers are busy (retry)"}
}
# What a route that takes no body, and changes nothing, can answer.
READ_ERRORS = {status: ERRORS[status] for status in (401, 404, 422, 429, 503)}
# A cancellation: a browser page of another origin is refused too.
CANCEL_ERRORS = {status: ERRORS[status] for status in (401, 403, 404, 422, 429, 503)}

# A 32x32 square of the shapes data (lenet5-shapes calls it a square): the body Swagger UI's "Try it out" sends.
EXAMPLE_IMAGE = base64.b64encode((Path(__file__).resolve().parent.parent / "web" / "example-square.png").read_bytes())
EXPLAIN_EXAMPLE = {
    "model": "lenet5-shapes",
    "methods": [{"name": "gradcam"}, {"name": "integrated_gradients", "params": {"steps": 16}}],
    "targets": {"top_k": 2},
    "outputs": ["heatmap"],
    "images": [EXAMPLE_IMAGE.decode()],
}
PREDICT_EXAMPLE = {"model": "lenet5-shapes", "top_k": 5, "images": [EXAMPLE_IMAGE.decode()]}


def request_body(json_model: str, options_model: str, example: dict) -> dict:
    """The ``requestBody`` of a route taking JSON with base64 ``images`` (``json_model``) or a multipart
    upload of ``images`` files and an ``options`` JSON field (``options_model``); both schemas are added to
    the document's components (``app/main.py``)."""
    options = {"$ref": f"#/components/schemas/{options_model}"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model}"}, "example": example},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["images", "options"],
                        "properties": {
                            "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "options": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": options,
                                "description": f"{options_model} as a JSON string.",
                                "example": json.dumps({k: v for k, v in example.items() if k != "images"}),
                            },
                        },
                    },
                    "encoding": {"options": {"contentType": "application/json"}},
                },
            },
        }
    }
