"""GET /models, /models/{name}, /methods: what can be asked for."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from app.auth import caller
from app.deps import DispatcherDep, RegistryDep
from app.dispatch import Dispatcher
from app.routes.responses import READ_ERRORS
from core.errors import ErrorCode, ServiceError
from core.kv import STORE_ERRORS
from core.methods import METHODS
from core.quality import SCORES
from core.validation import manifest_of
from models.registry import ModelRegistry

router = APIRouter(tags=["catalog"], dependencies=[Depends(caller)])


class ModelSummary(BaseModel):
    name: str
    available: bool = Field(description="A live worker has loaded the model: jobs for it run.")
    error: str | None = Field(
        None, description="Why the model is not available: its manifest's error, or a worker's load error."
    )
    version: str | None = Field(description="Null when the model's manifest cannot be read (see error).")
    description: str | None
    num_classes: int | None
    input_size: list[int] | None = Field(
        min_length=2, max_length=2, description="(height, width) of the network's input"
    )
    gradcam_layer: str | None = Field(description="The manifest's default layer for layer methods.")
    has_ood_head: bool | None


class ModelDetail(ModelSummary):
    labels: list[str]
    methods: list[str] | None = Field(description="The methods that run on the model; null until a worker loaded it.")
    unavailable_methods: dict[str, str] = Field(
        default_factory=dict, description="Methods that do not run on the model, with the reason."
    )
    layers: dict[str, list[str]] | None = Field(
        None, description="Per layer method, the layers it may use; null until a worker loaded the model."
    )
    default_layer: str | None = Field(None, description="The layer a layer method uses when the request names none.")
    forward_ms: float | None = Field(
        None,
        description="One forward pass of one image on a worker (measured at load): with a method's cost in passes "
        "(GET /methods), what a job will take.",
    )
    preprocessing: dict[str, Any] | None
    workers: list[str] = Field(description="Live workers that loaded the model; jobs for it get 503 while empty.")
    load_errors: dict[str, str] = Field(description="Per worker (or 'manifest'), why the model could not be loaded.")


class MethodInfo(BaseModel):
    name: str
    title: str
    description: str
    parameters: dict[str, Any]
    defaults: dict[str, Any]
    uses_layer: bool
    uses_attention: bool
    cost: str = Field(description="What the method runs per image: forward and backward passes.")
    needs_ood_head: bool
    perturbation: bool
    stochastic: bool


class QualityInfo(BaseModel):
    name: str
    title: str
    description: str
    better: Literal["higher", "lower"] = Field(description="Which way a better map moves the score.")
    cost: str
    per_map: bool = Field(
        description="Returned with each map when the request's quality names it; otherwise xai evaluate only."
    )
    range: list[float] = Field(min_length=2, max_length=2, description="(lowest, highest) value the score takes.")


def _summary(registry: ModelRegistry, name: str, state: dict[str, Any]) -> dict[str, Any]:
    workers, errors = state.get("workers", []), state.get("errors", {})
    found: dict[str, Any] = {
        "name": name,
        "available": bool(workers),
        "error": None if workers else next(iter(errors.values()), None),
    }
    if name in registry.broken:
        keys = ("version", "description", "num_classes", "input_size", "gradcam_layer", "has_ood_head")
        return found | dict.fromkeys(keys) | {"error": registry.broken[name]}
    manifest = registry.manifest(name)
    return found | {
        "version": manifest.version,
        "description": manifest.description,
        "num_classes": manifest.num_classes,
        "input_size": manifest.preprocessing.size,
        "gradcam_layer": manifest.gradcam_layer,
        "has_ood_head": manifest.ood_head is not None,
    }


async def _states(dispatcher: Dispatcher) -> dict[str, dict[str, Any]]:
    try:
        return await run_in_threadpool(dispatcher.models)
    except STORE_ERRORS:  # the store is away: the models are described, their workers are unknown
        return {}


@router.get("/models", response_model=list[ModelSummary], operation_id="list_models")
async def list_models(registry: RegistryDep, dispatcher: DispatcherDep) -> list[ModelSummary]:
    """Every model, the unavailable ones with the reason."""
    states = await _states(dispatcher)
    names = sorted([*registry.names(), *registry.broken])
    return [ModelSummary(**_summary(registry, name, states.get(name, {}))) for name in names]


@router.get("/models/{name}", response_model=ModelDetail, operation_id="get_model", responses=READ_ERRORS)
async def read_model(name: str, registry: RegistryDep, dispatcher: DispatcherDep) -> ModelDetail:
    """A model's labels and input, the methods that run on it and the layers each layer method may use (null
    until a worker loaded it), and its workers or why it is unavailable."""
    manifest = None if name in registry.broken else manifest_of(registry, name, "name")
    state = (await _states(dispatcher)).get(name, {})
    summary = _summary(registry, name, state)
    if manifest is None:
        return ModelDetail(
            **summary, labels=[], methods=None, preprocessing=None, workers=[], load_errors=state.get("errors", {})
        )
    capabilities = await run_in_threadpool(dispatcher.capabilities, name)
    return ModelDetail(
        **summary,
        labels=list(manifest.labels),
        methods=None if capabilities is None else [m for m in METHODS if m not in capabilities.unavailable],
        unavailable_methods={} if capabilities is None else capabilities.unavailable,
        layers=None if capabilities is None else capabilities.layers,
        default_layer=None if capabilities is None else capabilities.default_layer,
        forward_ms=None if capabilities is None else capabilities.forward_ms,
        preprocessing=manifest.preprocessing.model_dump(mode="json"),
        workers=state.get("workers", []),
        load_errors=state.get("errors", {}),
    )


@router.get("/methods", response_model=list[MethodInfo], operation_id="list_methods")
def list_methods() -> list[MethodInfo]:
    """Every method with its parameters' JSON schema and defaults."""
    return [MethodInfo(**method.describe()) for method in METHODS.values()]


@router.get("/methods/{name}", response_model=MethodInfo, operation_id="get_method", responses=READ_ERRORS)
def read_method(name: str) -> MethodInfo:
    if name not in METHODS:
        raise ServiceError(ErrorCode.unknown_method, f"unknown method {name!r}; known: {', '.join(METHODS)}", "name")
    return MethodInfo(**METHODS[name].describe())


@router.get("/quality", response_model=list[QualityInfo], operation_id="list_quality_scores")
def list_quality_scores() -> list[QualityInfo]:
    """The scores of a map's quality: those a job returns with each map (``quality`` in POST /explain) and those
    ``xai evaluate`` reports offline, each with what it measures, which way is better and what it costs."""
    return [QualityInfo(**score.describe()) for score in SCORES.values()]
