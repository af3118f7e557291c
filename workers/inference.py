"""The work of one job on a loaded model: predict, explain with every method asked for, render.

No store and no state machine here: the photos come in, the result goes out, and ``checkpoint``
is called with the job's progress between batches (it raises to stop the job: cancelled, timed
out, lease lost).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.contract import ImageResult, JobResult, JobSpec, MapResult, Prediction
from core.errors import ErrorCode, ServiceError
from models.preprocessing import preprocess
from workers.methods import Context, build_explainer, explain
from workers.model_host import ModelHost
from workers.rendering import PutPng, render_map

PREDICTIONS = 5  # classes listed per image (more when top_k asks for more)
Checkpoint = Callable[[float], None]


def photo_of(pixels: bytes, size: tuple[int, int]) -> Image.Image:
    """The RGB photo the API decoded, from its pixels (no second decode)."""
    return Image.frombuffer("RGB", size, pixels, "raw", "RGB", 0, 1)


def run_inference(
    spec: JobSpec,
    photos: list[Image.Image],
    host: ModelHost,
    checkpoint: Checkpoint,
    put_png: PutPng,
    timings: dict[str, float],
) -> JobResult:
    manifest = host.manifest(spec.model)
    inputs = torch.from_numpy(np.stack([preprocess(photo, manifest.preprocessing) for photo in photos]))
    inputs = inputs.to(host.device).contiguous(memory_format=torch.channels_last)
    with host.lock(spec.model):
        network = host.network(spec.model)
        started = time.perf_counter()
        with torch.inference_mode():
            probabilities = F.softmax(network(inputs).float(), dim=1)
        ood = host.ood_net(spec.model)
        scores = None
        if ood is not None:
            with torch.inference_mode():
                scores = ood.ood_score(inputs).tolist()
        timings["predict"] = (time.perf_counter() - started) * 1000
        top = probabilities.topk(min(max(PREDICTIONS, spec.top_k), probabilities.shape[1]), dim=1)
        targets = spec.targets or [row[: spec.top_k] for row in top.indices.tolist()]
        context = Context(network, manifest.gradcam_layer, spec.seed, ood)
        maps: list[list[MapResult]] = [[] for _ in photos]
        for index, call in enumerate(spec.methods):
            started = time.perf_counter()
            report = _scaled(checkpoint, index, len(spec.methods))
            report(0.0)
            saliency = _explain_all(call, index, context, inputs, targets, report)
            timings[call.name] = (time.perf_counter() - started) * 1000
            for image, photo in enumerate(photos):
                for column, target in enumerate(targets[image]):
                    values = saliency[image][column].numpy()
                    maps[image].append(render_map(spec, manifest, photo, image, call.name, target, values, put_png))
    images = [
        ImageResult(
            index=image,
            predictions=[
                Prediction(class_id=c, label=manifest.labels[c], probability=round(p, 6))
                for c, p in zip(top.indices[image].tolist(), top.values[image].tolist(), strict=True)
            ],
            ood_score=None if scores is None else scores[image],
            maps=maps[image],
        )
        for image in range(len(photos))
    ]
    return JobResult(model=spec.model, images=images)


def _explain_all(
    call, index: int, context: Context, inputs: torch.Tensor, targets: list[list[int]], report: Checkpoint
) -> list[torch.Tensor]:
    """Per image, the (L, H, W) maps of its targets. Images with as many targets run as one batch."""
    field = f"methods[{index}].params"
    try:
        explainer = build_explainer(call, context)
        groups = (
            [list(range(len(targets)))] if len({len(t) for t in targets}) == 1 else [[i] for i in range(len(targets))]
        )
        out: list[torch.Tensor] = [torch.empty(0)] * len(targets)
        for number, rows in enumerate(groups):
            wanted = torch.tensor([targets[i] for i in rows], device=inputs.device)
            maps = explain(call, explainer, inputs[rows], wanted, _scaled(report, number, len(groups)))
            for position, image in enumerate(rows):
                out[image] = maps[position].float().cpu()
            report((number + 1) / len(groups))
        return out
    except (TypeError, ValueError) as error:  # the call does not fit this model (a window larger than the image)
        raise ServiceError(ErrorCode.invalid_parameter, str(error), field) from None


def _scaled(report: Checkpoint, number: int, count: int) -> Checkpoint:
    return lambda fraction: report((number + fraction) / count)
