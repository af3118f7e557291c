"""Turn a client's request into a :class:`JobSpec` and the decoded pixels, or a ServiceError naming the field.

This is the one place a request is checked: the worker trusts the spec it is given.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

from PIL import Image

from core.capabilities import Capabilities
from core.contract import ExplainOptions, JobSpec, TopK
from core.errors import ErrorCode, ServiceError
from core.images import ImageRejected, decode_image, decode_mask
from core.methods import METHODS, MethodCallBase
from core.quality import MAX_PASSES_PER_IMAGE, passes_per_image
from core.settings import Settings
from models.manifest import Manifest, ModelUnavailableError, UnknownModelError


class Manifests(Protocol):
    """Where manifests are looked up by name (``models.registry.ModelRegistry``; core does not import it: it
    builds networks with torch)."""

    def manifest(self, name: str) -> Manifest: ...


CapabilitiesOf = Callable[[str], Capabilities | None]  # model -> what it can do, once a worker loaded it


def manifest_of(registry: Manifests, model: str, field: str = "model") -> Manifest:
    try:
        return registry.manifest(model)
    except UnknownModelError as error:
        raise ServiceError(ErrorCode.unknown_model, str(error), field) from None
    except ModelUnavailableError as error:  # its manifest is broken: no worker will ever serve it
        raise ServiceError(ErrorCode.no_worker, str(error), field) from None


def check_methods(calls: list[MethodCallBase], manifest: Manifest, capabilities: CapabilitiesOf) -> None:
    seen: set[str] = set()
    known = capabilities(manifest.name)  # None until a worker has loaded the model: the worker checks the call
    for index, call in enumerate(calls):
        method = METHODS[call.name]
        if call.name in seen:
            raise ServiceError(
                ErrorCode.invalid_parameter, f"method {call.name!r} is asked for twice", f"methods[{index}].name"
            )
        seen.add(call.name)
        if method.needs_ood_head and manifest.ood_head is None:
            raise ServiceError(
                ErrorCode.no_ood_head,
                f"method {call.name!r} needs an OoD head, which model {manifest.name!r} lacks",
                f"methods[{index}].name",
            )
        if known is None:
            continue
        known.refuse_unavailable(call.name, manifest.name, index)
        layer = getattr(call.params, "layer", None)
        if layer is not None and layer not in known.layers.get(call.name, []):
            raise ServiceError(
                ErrorCode.unknown_layer,
                f"layer {layer!r} of {manifest.name!r} cannot serve {call.name!r} (see GET /models/{manifest.name})",
                f"methods[{index}].params.layer",
            )


def resolve_targets(
    targets: list[int | list[int]] | TopK | None, manifest: Manifest, image_count: int, settings: Settings
) -> tuple[list[list[int]] | None, int]:
    """(explicit targets per image or None, top_k)."""
    limit = min(settings.max_top_k, manifest.num_classes)
    if targets is None:
        return None, 1
    if isinstance(targets, TopK):
        if targets.top_k > limit:
            raise ServiceError(ErrorCode.invalid_parameter, f"top_k must be <= {limit}", "targets.top_k")
        return None, targets.top_k
    if len(targets) != image_count:
        raise ServiceError(
            ErrorCode.invalid_parameter, f"targets has {len(targets)} entries for {image_count} images", "targets"
        )
    resolved = []
    for index, entry in enumerate(targets):
        ids = [entry] if isinstance(entry, int) else entry
        if not ids or len(ids) > limit:
            raise ServiceError(
                ErrorCode.invalid_parameter, f"give 1 to {limit} class ids per image", f"targets[{index}]"
            )
        for class_id in ids:
            if not 0 <= class_id < manifest.num_classes:
                raise ServiceError(
                    ErrorCode.target_out_of_range,
                    f"class id {class_id} is out of range for {manifest.name!r} (0..{manifest.num_classes - 1})",
                    f"targets[{index}]",
                )
        resolved.append(list(ids))
    return resolved, 1


def decode_all(files: list[bytes], settings: Settings, manifest: Manifest) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Decode every upload within the limits, once: (RGB pixels of each, its (width, height)). The
    request's images together stay within ``max_request_pixels``; a photo longer than ``photo_max_side``
    (or the network's input, if that is larger) is scaled down, keeping its aspect: the worker never
    holds more than that per image, whatever was uploaded."""
    if not files:
        raise ServiceError(ErrorCode.invalid_request, "give at least one image", "images")
    if len(files) > settings.max_images:
        raise ServiceError(ErrorCode.invalid_request, f"at most {settings.max_images} images per request", "images")
    pixels, sizes, total = [], [], 0
    side = max(settings.photo_max_side, *manifest.preprocessing.size, manifest.preprocessing.resize_shorter_to or 0)
    for index, data in enumerate(files):
        if len(data) > settings.max_upload_bytes:
            raise ServiceError(
                ErrorCode.payload_too_large,
                f"image {index} has {len(data)} bytes; the limit is {settings.max_upload_bytes}",
                f"images[{index}]",
            )
        try:
            image = decode_image(data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)
        except ImageRejected as error:
            raise ServiceError(ErrorCode.invalid_image, f"image {index}: {error}", f"images[{index}]") from None
        total += image.width * image.height
        if total > settings.max_request_pixels:
            raise ServiceError(
                ErrorCode.payload_too_large,
                f"the images up to {index} have {total} pixels together; a request may have "
                f"{settings.max_request_pixels}",
                f"images[{index}]",
            )
        if max(image.size) > side:
            image.thumbnail((side, side), Image.Resampling.BILINEAR)  # keeps the aspect
        pixels.append(image.tobytes())
        sizes.append(image.size)
    return pixels, sizes


def build_spec(
    options: ExplainOptions,
    files: list[bytes],
    registry: Manifests,
    capabilities: CapabilitiesOf,
    settings: Settings,
    job_id: str | None = None,
) -> tuple[JobSpec, list[bytes]]:
    """The request checked into the job's spec (``job_id``: the new job's id, else a fresh one) and the
    decoded pixels of its images; ServiceError naming the field that is wrong."""
    manifest = manifest_of(registry, options.model)
    check_methods(options.methods, manifest, capabilities)
    pixels, sizes = decode_all(files, settings, manifest)
    targets, top_k = resolve_targets(options.targets, manifest, len(files), settings)
    targets_per_image = max((len(ids) for ids in targets), default=1) if targets else top_k
    passes = passes_per_image(options.quality, options.quality_options, len(options.methods) * targets_per_image)
    if passes > MAX_PASSES_PER_IMAGE:
        raise ServiceError(
            ErrorCode.invalid_parameter,
            f"these quality scores need {passes} forward passes per image ({len(options.methods)} methods x "
            f"{targets_per_image} targets, {options.quality_options.steps} steps); at most {MAX_PASSES_PER_IMAGE}: "
            "fewer steps, methods or targets",
            "quality_options.steps",
        )
    if options.spatial is not None and not manifest.spatial_scores:
        raise ServiceError(
            ErrorCode.invalid_parameter,
            f"model {manifest.name!r} returns one score per class, not per position: it takes no spatial options",
            "spatial",
        )
    if options.spatial is not None and options.spatial.mask is not None:
        try:
            decode_mask(options.spatial.mask)
        except ImageRejected as error:
            raise ServiceError(ErrorCode.invalid_image, f"the mask: {error}", "spatial.mask") from None
    spec = JobSpec(
        job_id=job_id or uuid.uuid4().hex,
        model=manifest.name,
        methods=options.methods,
        targets=targets,
        top_k=top_k,
        outputs=list(dict.fromkeys(options.outputs)),
        render=options.render,
        seed=options.seed,
        spatial=options.spatial,
        quality=list(dict.fromkeys(options.quality)),
        quality_options=options.quality_options,
        image_count=len(files),
        image_sizes=sizes,
    )
    return spec, pixels
