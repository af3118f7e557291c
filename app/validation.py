"""Turn a client's request into a :class:`JobSpec`, or an :class:`ApiError` naming the field."""

from __future__ import annotations

import uuid

from pydantic import ValidationError

from app.contract import ExplainOptions, JobSpec, MethodCall, TopK
from app.dispatch import Dispatcher
from app.errors import ApiError, first_error
from app.images import ImageRejected, decode_image
from app.settings import Settings
from models.manifest import Manifest, UnknownModelError
from models.registry import ModelRegistry
from workers.method_registry import METHODS


def manifest_of(registry: ModelRegistry, model: str, field: str = "model") -> Manifest:
    try:
        return registry.manifest(model)
    except UnknownModelError as error:
        raise ApiError("unknown_model", str(error), field) from None


def check_methods(calls: list[MethodCall], manifest: Manifest, dispatcher: Dispatcher) -> list[MethodCall]:
    seen: set[str] = set()
    checked = []
    for index, call in enumerate(calls):
        spec = METHODS.get(call.name)
        if spec is None:
            raise ApiError(
                "unknown_method", f"unknown method {call.name!r}; see GET /methods", f"methods[{index}].name"
            )
        if call.name in seen:
            raise ApiError("invalid_parameter", f"method {call.name!r} is asked for twice", f"methods[{index}].name")
        seen.add(call.name)
        try:
            params = spec.params.model_validate(call.params)
        except ValidationError as error:
            field, message = first_error(error.errors(), f"methods[{index}].params")
            raise ApiError("invalid_parameter", message, field) from None
        if spec.needs_ood_head and manifest.ood_head is None:
            raise ApiError(
                "no_ood_head",
                f"method {call.name!r} needs an OoD head, which model {manifest.name!r} lacks",
                f"methods[{index}].name",
            )
        layer = getattr(params, "layer", None)
        if layer is not None:
            known = dispatcher.layers(manifest.name)
            if known is not None and layer not in known:
                raise ApiError(
                    "unknown_layer",
                    f"layer {layer!r} is not a spatial layer of {manifest.name!r} (see GET /models/{manifest.name})",
                    f"methods[{index}].params.layer",
                )
        checked.append(MethodCall(name=call.name, params=params.model_dump(mode="json")))
    return checked


def resolve_targets(
    targets: list[int | list[int]] | TopK | None, manifest: Manifest, image_count: int, settings: Settings
) -> tuple[list[list[int]] | None, int]:
    """(explicit targets per image or None, top_k)."""
    limit = min(settings.max_top_k, manifest.num_classes)
    if targets is None:
        return None, 1
    if isinstance(targets, TopK):
        if targets.top_k > limit:
            raise ApiError("invalid_parameter", f"top_k must be <= {limit}", "targets.top_k")
        return None, targets.top_k
    if len(targets) != image_count:
        raise ApiError("invalid_parameter", f"targets has {len(targets)} entries for {image_count} images", "targets")
    resolved = []
    for index, entry in enumerate(targets):
        ids = [entry] if isinstance(entry, int) else entry
        if not ids or len(ids) > limit:
            raise ApiError("invalid_parameter", f"give 1 to {limit} class ids per image", f"targets[{index}]")
        for class_id in ids:
            if not 0 <= class_id < manifest.num_classes:
                raise ApiError(
                    "target_out_of_range",
                    f"class id {class_id} is out of range for {manifest.name!r} (0..{manifest.num_classes - 1})",
                    f"targets[{index}]",
                )
        resolved.append(list(ids))
    return resolved, 1


def decode_all(files: list[bytes], settings: Settings) -> list[tuple[int, int]]:
    """Check every upload decodes within the limits; returns their (width, height)."""
    if not files:
        raise ApiError("invalid_request", "give at least one image", "images")
    if len(files) > settings.max_images:
        raise ApiError("invalid_request", f"at most {settings.max_images} images per request", "images")
    sizes = []
    for index, data in enumerate(files):
        if len(data) > settings.max_upload_bytes:
            raise ApiError(
                "payload_too_large",
                f"image {index} has {len(data)} bytes; the limit is {settings.max_upload_bytes}",
                f"images[{index}]",
            )
        try:
            sizes.append(
                decode_image(data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels).size
            )
        except ImageRejected as error:
            raise ApiError("invalid_image", f"image {index}: {error}", f"images[{index}]") from None
    return sizes


def build_spec(
    options: ExplainOptions,
    files: list[bytes],
    registry: ModelRegistry,
    dispatcher: Dispatcher,
    settings: Settings,
) -> JobSpec:
    manifest = manifest_of(registry, options.model)
    methods = check_methods(options.methods, manifest, dispatcher)
    sizes = decode_all(files, settings)
    targets, top_k = resolve_targets(options.targets, manifest, len(files), settings)
    return JobSpec(
        job_id=uuid.uuid4().hex,
        model=manifest.name,
        methods=methods,
        targets=targets,
        top_k=top_k,
        outputs=list(dict.fromkeys(options.outputs)),
        render=options.render,
        seed=options.seed,
        image_count=len(files),
        image_sizes=sizes,
    )
