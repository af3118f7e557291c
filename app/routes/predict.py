"""POST /predict: top-k classes (and the OoD score) of one or more images, synchronously."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from app.auth import ClientDep
from app.deps import DispatcherDep, RegistryDep, SettingsDep
from app.routes.explain import read_body
from app.routes.responses import PREDICT_ERRORS, PREDICT_EXAMPLE, request_body
from core.contract import JobSpec, JobView, Predictions, PredictJSON, PredictOptions, RenderOptions
from core.errors import ErrorCode, ServiceError
from core.validation import decode_all, manifest_of

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=Predictions,
    operation_id="predict",
    responses=PREDICT_ERRORS,
    openapi_extra=request_body("PredictJSON", "PredictOptions", PREDICT_EXAMPLE),
)
async def predict(
    request: Request, settings: SettingsDep, registry: RegistryDep, dispatcher: DispatcherDep, caller: ClientDep
) -> Predictions:
    """Classify: the top-k labels with probabilities, and the OoD score where the model has a head.

    A failed prediction answers with its error code's status (``out_of_memory`` 503, ``timeout`` 504, ...)."""
    options, files = await read_body(request, PredictJSON, PredictOptions)
    manifest = manifest_of(registry, options.model)
    job_id = uuid.uuid4().hex

    def accept() -> JobView:
        """Decode, create and send: one hop to a thread for all of it."""
        pixels, sizes = decode_all(files, settings, manifest)
        spec = JobSpec(
            job_id=job_id,
            model=manifest.name,
            methods=[],
            top_k=min(options.top_k, manifest.num_classes),
            outputs=["raw"],
            render=RenderOptions(),
            image_count=len(files),
            image_sizes=sizes,
        )
        return dispatcher.enqueue(spec, pixels, caller.owner, caller.quota)

    with dispatcher.waiters.watching(job_id) as watch:
        view = await watch.until_end(settings.wait_cap_s, await run_in_threadpool(accept))
    if view.state == "succeeded" and view.result is not None:
        return Predictions(model=view.result.model, images=view.result.images)
    if view.error is not None:
        raise ServiceError(view.error.code, view.error.message, view.error.field)
    if view.state == "cancelled":
        raise ServiceError(ErrorCode.cancelled, "the prediction was cancelled")
    await run_in_threadpool(dispatcher.cancel, job_id)
    raise ServiceError(ErrorCode.timeout, f"no prediction within {settings.wait_cap_s} s; the workers are busy")


__all__ = ["router"]
