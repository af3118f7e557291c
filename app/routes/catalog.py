"""GET /models, /models/{name}, /methods: what can be asked for."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from app.auth import caller
from app.deps import DispatcherDep, RegistryDep
from app.routes.responses import ERRORS
from app.validation import manifest_of
from core.errors import ErrorCode, ServiceError
from core.kv import STORE_ERRORS
from core.methods import METHODS
from models.manifest import Manifest

router = APIRouter(tags=["catalog"], dependencies=[Depends(caller)])


class ModelSummary(BaseModel):
    name: str
    version: str
    description: str
    num_classes: int
    input_size: list[int] = Field(min_length=2, max_length=2, description="(height, width) of the network's input")
    gradcam_layer: str
    has_ood_head: bool


class ModelDetail(ModelSummary):
    labels: list[str]
    layers: list[str] | None = None
    preprocessing: dict[str, Any]
    workers: list[str] = Field(description="Live workers that loaded the model; jobs for it get 503 while empty.")
    load_errors: dict[str, str] = Field(description="Per worker, why it could not load the model.")


class MethodInfo(BaseModel):
    name: str
    title: str
    description: str
    parameters: dict[str, Any]
    defaults: dict[str, Any]
    uses_layer: bool
    needs_ood_head: bool
    perturbation: bool
    stochastic: bool


def _summary(manifest: Manifest) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "version": manifest.version,
        "description": manifest.description,
        "num_classes": manifest.num_classes,
        "input_size": manifest.preprocessing.size,
        "gradcam_layer": manifest.gradcam_layer,
        "has_ood_head": manifest.ood_head is not None,
    }


@router.get("/models", response_model=list[ModelSummary], operation_id="list_models")
def list_models(registry: RegistryDep) -> list[ModelSummary]:
    return [ModelSummary(**_summary(registry.manifest(name))) for name in registry.names()]


@router.get("/models/{name}", response_model=ModelDetail, operation_id="get_model", responses=ERRORS)
async def read_model(name: str, registry: RegistryDep, dispatcher: DispatcherDep) -> ModelDetail:
    """A model's labels, input, the layers layer methods may use (null until a worker loaded it), and its workers."""
    manifest = manifest_of(registry, name, "name")
    layers = await run_in_threadpool(dispatcher.layers, manifest.name)
    try:
        state = (await run_in_threadpool(dispatcher.models)).get(manifest.name, {})
    except STORE_ERRORS:  # the store is away: the model is described, its workers are unknown
        state = {}
    return ModelDetail(
        workers=state.get("workers", []),
        load_errors=state.get("errors", {}),
        **_summary(manifest),
        labels=list(manifest.labels),
        layers=layers,
        preprocessing=manifest.preprocessing.model_dump(mode="json"),
    )


@router.get("/methods", response_model=list[MethodInfo], operation_id="list_methods")
def list_methods() -> list[MethodInfo]:
    """Every method with its parameters' JSON schema and defaults."""
    return [MethodInfo(**method.describe()) for method in METHODS.values()]


@router.get("/methods/{name}", response_model=MethodInfo, operation_id="get_method", responses=ERRORS)
def read_method(name: str) -> MethodInfo:
    if name not in METHODS:
        raise ServiceError(ErrorCode.unknown_method, f"unknown method {name!r}; known: {', '.join(METHODS)}", "name")
    return MethodInfo(**METHODS[name].describe())
