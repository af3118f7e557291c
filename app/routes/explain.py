"""POST /explain: images + model + methods -> a job; ?wait=S returns the result when it is quick."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError

from app.auth import ClientDep
from app.deps import DispatcherDep, RegistryDep, SettingsDep
from app.errors import classify
from app.routes.responses import ERRORS, EXPLAIN_EXAMPLE, request_body
from core.contract import TERMINAL_STATES, ExplainJSON, ExplainOptions, JobSpec, JobView
from core.errors import ErrorCode, ServiceError
from core.validation import build_spec

router = APIRouter(tags=["explain"])

BODY = request_body("ExplainJSON", "ExplainOptions", EXPLAIN_EXAMPLE)


def _invalid(error: ValidationError, prefix: str = "") -> ServiceError:
    """A request that did not validate; JSON that does not parse (or nests too deep) names the part
    that held it: the body, or the form's ``options``."""
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        where = prefix or "body"
        reason = str(first["msg"]).removeprefix("Invalid JSON: ")
        return ServiceError(ErrorCode.invalid_request, f"{where}: not valid JSON ({reason})", where)
    return classify(list(error.errors()), prefix)


async def read_body(
    request: Request, json_type: type[BaseModel], form_type: type[BaseModel]
) -> tuple[Any, list[bytes]]:
    """(options, image bytes) from a JSON body with base64 ``images`` (``json_type``) or a multipart
    upload of ``images`` files with an ``options`` JSON field (``form_type``)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        body = await request.body()
        try:
            parsed = json_type.model_validate_json(body)
        except ValidationError as error:
            raise _invalid(error) from None
        files = []
        for index, text in enumerate(parsed.images):  # type: ignore[attr-defined]
            try:
                files.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise ServiceError(
                    ErrorCode.invalid_image, f"image {index} is not valid base64", f"images[{index}]"
                ) from None
        return parsed, files
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=64, max_fields=16)
        uploads = form.getlist("images")
        files = [await upload.read() for upload in uploads if hasattr(upload, "read")]
        if len(files) != len(uploads):
            raise ServiceError(ErrorCode.invalid_request, "images must be file uploads", "images")
        raw = form.get("options")
        if not isinstance(raw, str):
            raise ServiceError(ErrorCode.invalid_request, "the form needs an 'options' field holding JSON", "options")
        try:  # pydantic's parser: a nesting limit where json.loads recursed into a 500
            return form_type.model_validate_json(raw), files
        except ValidationError as error:
            raise _invalid(error, "options") from None
    raise ServiceError(ErrorCode.unsupported_media_type, "send application/json or multipart/form-data", "Content-Type")


@router.post(
    "/explain",
    response_model=JobView,
    status_code=202,
    openapi_extra=BODY,
    operation_id="create_explanation",
    responses={200: {"model": JobView, "description": "Finished within ?wait"}, **ERRORS},
)
async def create_explanation(
    request: Request,
    response: Response,
    settings: SettingsDep,
    registry: RegistryDep,
    dispatcher: DispatcherDep,
    caller: ClientDep,
    wait: float = Query(0.0, ge=0.0, description="Seconds to wait for the result (capped by the server)."),
) -> JobView:
    """Queue an explanation job: 202 with the job, or 200 with its result if it finished within ``wait``."""
    options, files = await read_body(request, ExplainJSON, ExplainOptions)
    job_id = uuid.uuid4().hex

    def accept() -> tuple[JobSpec, JobView]:
        """Check, decode, create and send: one hop to a thread for all of it."""
        spec, pixels = build_spec(options, files, registry, dispatcher.capabilities, settings, job_id)
        return spec, dispatcher.enqueue(spec, pixels, caller.owner, caller.quota)

    with dispatcher.waiters.watching(job_id) as watch:  # before the job exists: its end cannot slip past
        spec, view = await run_in_threadpool(accept)
        request.app.state.metrics.jobs.labels(spec.model).inc()
        if wait > 0:
            view = await watch.until_end(min(wait, settings.wait_cap_s), view)
    response.headers["Location"] = f"/jobs/{spec.job_id}"
    if view.state in TERMINAL_STATES:
        response.status_code = 200
    return view
