"""POST /predict: top-k classes (and the OoD score) of one or more images, synchronously."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from app.contract import ExplainOptions, ImageResult, MethodCall, TopK
from app.deps import DispatcherDep, RegistryDep, SettingsDep
from app.errors import ApiError
from app.routes.explain import read_body, wait_for
from app.routes.responses import ERRORS
from app.validation import build_spec

router = APIRouter(tags=["predict"])


class PredictOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(examples=["lenet5-shapes"])
    top_k: int = Field(5, ge=1)


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
    limit = settings.max_images * settings.max_upload_bytes * 4 // 3 + (1 << 20)
    options, files = await read_body(request, limit, PredictJSON, PredictOptions)
    placeholder = ExplainOptions(model=options.model, methods=[MethodCall(name="gradient")], targets=TopK(top_k=1))
    spec = await run_in_threadpool(build_spec, placeholder, files, registry, dispatcher, settings)
    spec = spec.model_copy(update={"methods": [], "top_k": min(options.top_k, settings.max_top_k)})
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
