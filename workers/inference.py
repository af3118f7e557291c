"""The work of a batch of jobs on a loaded model: predict, explain with every method, then results.

No store and no state machine here. :func:`compute` takes the photos of one or more jobs that ask
for the same methods with the same seed (a batch, see ``workers/job_runner.py``), runs one
prediction pass and each method once over all their images, and calls ``checkpoint`` with the
progress between batches (it raises to stop: cancelled, timed out, lease lost).
:func:`result_of` turns one job's share into its :class:`JobResult`, with its maps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from PIL import Image

from core.contract import ImageResult, JobResult, JobSpec, MapResult, Prediction
from core.errors import ErrorCode, ServiceError
from core.methods import MethodCallBase
from workers.methods import Context, build_explainer, explain, probabilities
from workers.model_host import ModelHost
from workers.network_inputs import network_inputs
from workers.quality import MapScores, needs_passes, score_maps
from workers.rendering import PutMap, map_result
from workers.xai import Explainer, OoDNet, TopTargets, features_of_pass

PREDICTIONS = 5  # classes listed per image (more when top_k asks for more)
Checkpoint = Callable[[float], None]


@dataclass
class Computed:
    """One image of one job: its predictions, OoD score, targets, and per method the (L, H, W) maps."""

    classes: list[int]
    probabilities: list[float]
    ood_score: float | None
    targets: list[int]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    masks_used: dict[str, int] = field(default_factory=dict)  # RISE and RISEPlus: masks each map averages
    quality: MapScores = field(default_factory=dict)


def compute(
    specs: list[JobSpec],
    photos: list[list[Image.Image]],
    host: ModelHost,
    checkpoint: Checkpoint,
    timings: dict[str, float],
) -> list[list[Computed]]:
    """Per job, per image, what :func:`result_of` needs. The specs share ``JobSpec.batch_key``."""
    first = specs[0]
    manifest = host.manifest(first.model)
    flat = [photo for job in photos for photo in job]
    inputs = network_inputs(flat, manifest.preprocessing, host.device)
    capabilities = host.capabilities(first.model)
    for index, call in enumerate(first.methods):  # the API checked this too, if it knew the model by then
        capabilities.refuse_unavailable(call.name, first.model, index)
    with host.lock(first.model), host.spatial(first.model, first.spatial):
        context = host.context(first.model, first.seed)
        network, ood, to_probabilities = context.network, context.ood_net, probabilities(context.probabilities)
        lead = _lead(specs, context)
        slots = len(first.methods) + needs_passes(first)  # progress: a share per method, one for the scores
        started = time.perf_counter()
        if lead is None:
            chances, scores = _predict(network, ood, inputs, to_probabilities)
            timings["predict"] = (time.perf_counter() - started) * 1000
        else:  # the first method's forward pass is the prediction: its targets are the top classes
            report = _scaled(checkpoint, 0, slots)
            report(0.0)
            with _features_of_lead(context, len(inputs)) as features:
                lead_maps = _explain_lead(first.methods[0], lead, inputs, TopTargets(first.top_k), report)
            timings["predict"] = 0.0
            timings[first.methods[0].name] = (time.perf_counter() - started) * 1000
            chances = to_probabilities(lead.last_outputs.float())
            scores = None if ood is None else _score_features(ood, features, inputs)
        most = max(max(PREDICTIONS, spec.top_k) for spec in specs)
        top = chances.topk(min(most, chances.shape[1]), dim=1)
        images: list[Computed] = []
        for spec in specs:
            for index in range(spec.image_count):
                row = len(images)
                ranked = top.indices[row].tolist()
                keep = min(max(PREDICTIONS, spec.top_k), len(ranked))
                images.append(
                    Computed(
                        classes=ranked[:keep],
                        probabilities=top.values[row, :keep].tolist(),
                        ood_score=None if scores is None else scores[row],
                        targets=spec.targets[index] if spec.targets else ranked[: spec.top_k],
                    )
                )
        if lead is not None:
            for image, maps in zip(images, lead_maps, strict=True):
                image.maps[first.methods[0].name] = maps
        for index, call in enumerate(first.methods):
            if index == 0 and lead is not None:
                continue
            started = time.perf_counter()
            report = _scaled(checkpoint, index, slots)
            report(0.0)
            saliency, used = _explain_all(call, index, context, inputs, [image.targets for image in images], report)
            timings[call.name] = (time.perf_counter() - started) * 1000
            for image, maps, masks in zip(images, saliency, used, strict=True):
                image.maps[call.name] = maps
                if masks is not None:
                    image.masks_used[call.name] = masks
        if first.quality:
            started = time.perf_counter()
            report = _scaled(checkpoint, len(first.methods), slots)
            maps, targets = [image.maps for image in images], [image.targets for image in images]
            for image, scores in zip(images, score_maps(first, context, inputs, maps, targets, report), strict=True):
                image.quality = scores
            timings["quality"] = (time.perf_counter() - started) * 1000
    per_job, start = [], 0
    for spec in specs:
        per_job.append(images[start : start + spec.image_count])
        start += spec.image_count
    return per_job


def result_of(spec: JobSpec, computed: list[Computed], host: ModelHost, put_map: PutMap) -> JobResult:
    """One job's result from its share of :func:`compute`, its maps in the forms it asked for."""
    manifest = host.manifest(spec.model)
    images = []
    for index, image in enumerate(computed):
        maps: list[MapResult] = []
        for call in spec.methods:
            for column, target in enumerate(image.targets):
                values = image.maps[call.name][column].numpy()
                found = map_result(spec, manifest, index, call.name, target, values, put_map)
                found.masks_used = image.masks_used.get(call.name)
                found.quality = image.quality.get((call.name, target), {})
                maps.append(found)
        images.append(
            ImageResult(
                index=index,
                predictions=[
                    Prediction(class_id=c, label=manifest.labels[c], probability=round(p, 6))
                    for c, p in zip(image.classes, image.probabilities, strict=True)
                ],
                ood_score=image.ood_score,
                maps=maps,
            )
        )
    return JobResult(model=spec.model, images=images)


def _lead(specs: list[JobSpec], context: Context) -> Explainer | None:
    """The explainer of the first method when its forward pass can also be the prediction: every image
    explained for its top-k classes with one k, a method whose first forward pass is over the inputs
    themselves, and no OoD head or one whose features that pass computes (``Context.ood_features``)."""
    first = specs[0]
    if context.ood_net is not None and context.ood_features is None:
        return None
    if not first.methods or any(spec.targets for spec in specs):
        return None
    if len({spec.top_k for spec in specs}) != 1:
        return None
    try:
        explainer = build_explainer(first.methods[0], context)
    except (TypeError, ValueError):
        return None  # the usual path reports the error, with its field
    return explainer if explainer.first_forward_is_the_inputs else None


def _features_of_lead(context: Context, rows: int) -> AbstractContextManager[list[torch.Tensor]]:
    """The OoD head's features from the lead method's first forward pass (nothing without a head)."""
    if context.ood_net is None or context.ood_features is None:
        return nullcontext([])
    return features_of_pass(context.network, context.ood_features, rows)


def _score_features(ood: OoDNet, features: list[torch.Tensor], inputs: torch.Tensor) -> list[float]:
    """The OoD scores from the features of the lead's pass; from a pass of their own if it ran elsewhere
    (an explainer forwarding a copy of the network)."""
    with torch.inference_mode():
        return ood.score_features(features[0] if features else ood.features(inputs)).tolist()


def _explain_lead(
    call: MethodCallBase, explainer: Explainer, inputs: torch.Tensor, targets: TopTargets, report: Checkpoint
) -> list[torch.Tensor]:
    """Per image, the (k, H, W) maps of its top-k classes, from the pass that also gives the prediction."""
    try:
        maps = explain(call, explainer, inputs, targets, report)
    except (TypeError, ValueError) as error:
        raise ServiceError(ErrorCode.invalid_parameter, str(error), "methods[0].params") from None
    report(1.0)
    return [row.float().cpu() for row in maps]


def _predict(
    network: torch.nn.Module, ood, inputs: torch.Tensor, to_probabilities: torch.nn.Module
) -> tuple[torch.Tensor, list[float] | None]:
    """(class probabilities (N, K), OoD scores or None). With an OoD head on a network that can classify
    its own features, one pass serves both; otherwise the head reads the features in a second pass."""
    with torch.inference_mode():
        if ood is None:
            return to_probabilities(network(inputs).float()), None
        if ood.underlying is network and hasattr(network, "classify_features"):
            features = ood.features(inputs)
            logits = network.classify_features(features)
            return to_probabilities(logits.float()), ood.score_features(features).tolist()
        return to_probabilities(network(inputs).float()), ood.ood_score(inputs).tolist()


def _explain_all(
    call: MethodCallBase,
    index: int,
    context: Context,
    inputs: torch.Tensor,
    targets: list[list[int]],
    report: Checkpoint,
) -> tuple[list[torch.Tensor], list[int | None]]:
    """Per image, the (L, H, W) maps of its targets and, for RISE, the masks they average. Images with
    as many targets run as one batch."""
    field = f"methods[{index}].params"
    try:
        explainer = build_explainer(call, context)
        groups: dict[int, list[int]] = {}
        for image, wanted in enumerate(targets):
            groups.setdefault(len(wanted), []).append(image)
        out: list[torch.Tensor] = [torch.empty(0)] * len(targets)
        used: list[int | None] = [None] * len(targets)
        for number, rows in enumerate(groups.values()):
            wanted = torch.tensor([targets[i] for i in rows], device=inputs.device)
            maps = explain(call, explainer, inputs[rows], wanted, _scaled(report, number, len(groups)))
            counts = getattr(explainer, "masks_used", None)
            for position, image in enumerate(rows):
                out[image] = maps[position].float().cpu()
                used[image] = None if counts is None else counts[position]
            report((number + 1) / len(groups))
        return out, used
    except (TypeError, ValueError) as error:  # the call does not fit this model (a window larger than the image)
        raise ServiceError(ErrorCode.invalid_parameter, str(error), field) from None


def _scaled(report: Checkpoint, number: int, count: int) -> Checkpoint:
    return lambda fraction: report((number + fraction) / count)
