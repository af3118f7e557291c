"""POST /predict: top-k classes (and the OoD score) of one or more images, synchronously."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from app.contract import ImageResult, JobSpec, RenderOptions
from app.deps import DispatcherDep, RegistryDep, SettingsDep
from app.errors import ApiError
from app.routes.explain import read_body, wait_for
from app.routes.responses import ERRORS
from app.validation import decode_all, manifest_of

router = APIRouter(tags=["predict"])


class PredictOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(examples=["lenet5-shapes"])
    top_k: int = Field(5, ge=1, le=1000, description="Classes listed per image (at least 5).")


class PredictJSON(PredictOptions):
    images: list[str] = Field(min_length=1, description="Base64-encoded image files.")


class Predictions(BaseModel):
    model: str
    images: list[ImageResult]


@router.post(
    "/predict",
    response_model=Predictions,
    operation_id="predict",
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictJSON"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["images", "options"],
                        "properties": {
                            "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "options": {"type": "string", "description": "PredictOptions as a JSON string."},
                        },
                    }
                },
            },
        }
    },
)
async def predict(
    request: Request, settings: SettingsDep, registry: RegistryDep, dispatcher: DispatcherDep
) -> Predictions:
    """Classify: the top-k labels with probabilities, and the OoD score where the model has a head."""
    options, files = await read_body(request, settings.max_request_bytes, PredictJSON, PredictOptions)
    manifest = manifest_of(registry, options.model)
    sizes = await run_in_threadpool(decode_all, files, settings)
    spec = JobSpec(
        job_id=uuid.uuid4().hex,
        model=manifest.name,
        methods=[],
        top_k=min(options.top_k, manifest.num_classes),
        outputs=["raw"],
        render=RenderOptions(),
        image_count=len(files),
        image_sizes=sizes,
    )
    await run_in_threadpool(dispatcher.store.create, spec, files)
    await run_in_threadpool(dispatcher.submit, spec)
    view = await wait_for(dispatcher, spec.job_id, settings.wait_cap_s)
    if view.state == "succeeded" and view.result is not None:
        return Predictions(model=view.result.model, images=view.result.images)
    if view.error is not None:
        raise ApiError(view.error.code, view.error.message, view.error.field)
    await run_in_threadpool(dispatcher.cancel, spec.job_id)
    raise ApiError("timeout", f"no prediction within {settings.wait_cap_s} s; the workers are busy")


__all__ = ["PredictJSON", "router"]
