"""Run one job: the single function both transports call (Celery task, embedded pool).

It reads the job's spec and images from the job store, predicts, explains with every method
asked for, renders the maps and writes the result back. Progress goes to the store after each
batch; a cancellation request stops the job between batches. Known failures become error codes;
nothing of a traceback leaves the worker.
"""

from __future__ import annotations

import base64
import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from app.contract import TERMINAL_STATES, ErrorInfo, ImageResult, JobResult, JobSpec, MapResult, Prediction, RawMap
from app.images import ImageRejected, decode_image
from app.job_store import JobStore
from models.preprocessing import map_to_photo, preprocess
from workers.method_registry import METHODS, MethodSpec
from workers.model_host import ModelHost
from workers.render import heatmap, overlay, png_bytes

log = logging.getLogger(__name__)
PREDICTIONS = 5  # classes listed per image (more when top_k asks for more)


class Cancelled(Exception):
    pass


class JobError(Exception):
    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=code, message=message, field=field)


def run_job(job_id: str, store: JobStore, host: ModelHost) -> str:
    """Run the job to a terminal state and return that state."""
    view, spec = store.view(job_id), store.spec(job_id)
    if view is None or spec is None:
        return "expired"
    if view.state in TERMINAL_STATES:
        return view.state
    if store.cancel_requested(job_id):
        store.update(job_id, state="cancelled", finished_at=time.time(), only_from={"queued"})
        return "cancelled"
    if store.update(job_id, state="running", started_at=time.time(), only_from={"queued"}) is None:
        return "cancelled"  # cancelled (or expired) between the two reads
    timings: dict[str, float] = {}
    try:
        result = _run(spec, store, host, timings)
    except Cancelled:
        store.update(job_id, state="cancelled", finished_at=time.time(), timings_ms=timings)
        return "cancelled"
    except JobError as error:
        return _fail(store, job_id, error.info, timings)
    except torch.cuda.OutOfMemoryError:
        info = ErrorInfo(code="out_of_memory", message="the device ran out of memory; try fewer images or masks")
        return _fail(store, job_id, info, timings)
    except Exception:
        log.exception("job %s failed", job_id)
        return _fail(store, job_id, ErrorInfo(code="internal", message="the worker failed to run the job"), timings)
    store.update(job_id, state="succeeded", progress=1.0, finished_at=time.time(), timings_ms=timings, result=result)
    for method, ms in timings.items():
        store.record_duration(method, ms / 1000)
    return "succeeded"


def _fail(store: JobStore, job_id: str, info: ErrorInfo, timings: dict[str, float]) -> str:
    store.update(job_id, state="failed", finished_at=time.time(), error=info, timings_ms=timings)
    store.record_failure(info.code)
    return "failed"


def _run(spec: JobSpec, store: JobStore, host: ModelHost, timings: dict[str, float]) -> JobResult:
    manifest = host.manifest(spec.model)
    photos = [_photo(store, spec.job_id, index) for index in range(spec.image_count)]
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
        maps: list[list[MapResult]] = [[] for _ in photos]
        for index, call in enumerate(spec.methods):
            method = METHODS[call.name]
            started = time.perf_counter()
            report = _progress(store, spec.job_id, index, len(spec.methods))
            report(0.0)
            saliency = _explain(method, call.params, network, host, spec, inputs, targets, report)  # (N, L, H, W)
            timings[call.name] = (time.perf_counter() - started) * 1000
            for image, photo in enumerate(photos):
                for column, target in enumerate(targets[image]):
                    maps[image].append(
                        _render(store, spec, manifest, photo, image, call.name, target, saliency[image][column])
                    )
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


def _photo(store: JobStore, job_id: str, index: int) -> Image.Image:
    data = store.image(job_id, index)
    if data is None:
        raise JobError("expired", "the job's images expired before it ran")
    try:
        return decode_image(data, max_bytes=len(data), max_pixels=1 << 62)
    except ImageRejected as error:  # checked by the API already; only a changed store gets here
        raise JobError("invalid_image", str(error), f"images[{index}]") from None


def _progress(store: JobStore, job_id: str, index: int, count: int) -> Callable[[float], None]:
    """Progress of method ``index`` of ``count`` -> the job's progress; raises Cancelled when asked."""
    last = [0.0]

    def report(fraction: float) -> None:
        if store.cancel_requested(job_id):
            raise Cancelled
        now = time.monotonic()
        if fraction == 0.0 or now - last[0] > 0.2:
            last[0] = now
            store.update(job_id, progress=round(min((index + fraction) / count, 0.999), 4))

    return report


def _explainer(
    method: MethodSpec, params: Any, network: torch.nn.Module, host: ModelHost, spec: JobSpec, field: str
) -> Any:
    manifest = host.manifest(spec.model)
    module, _, name = method.explainer.partition(":")
    cls = getattr(importlib.import_module(module), name)
    args: list[Any] = [network]
    if method.needs_ood_head:
        ood = host.ood_net(spec.model)
        if ood is None:
            raise JobError("no_ood_head", f"model {spec.model!r} has no OoD head", field)
        args.insert(0, ood)
    if method.perturbation:
        args.append(torch.nn.Softmax(dim=1))
    return cls(*args, **method.kwargs(params, manifest.gradcam_layer, spec.seed))


def _explain(
    method: MethodSpec,
    raw_params: dict[str, Any],
    network: torch.nn.Module,
    host: ModelHost,
    spec: JobSpec,
    inputs: torch.Tensor,
    targets: list[list[int]],
    report: Callable[[float], None],
) -> list[torch.Tensor]:
    """Per image, the (L, H, W) maps of its targets."""
    field = f"methods[{[m.name for m in spec.methods].index(method.name)}].params"
    params = method.params.model_validate(raw_params)
    try:
        explainer = _explainer(method, params, network, host, spec, field)
        groups = (
            [list(range(len(targets)))] if len({len(t) for t in targets}) == 1 else [[i] for i in range(len(targets))]
        )
        out: list[torch.Tensor] = [torch.empty(0)] * len(targets)
        for number, rows in enumerate(groups):
            kwargs = {"progress": _scaled(report, number, len(groups))} if method.perturbation else {}
            maps = explainer(inputs[rows], torch.tensor([targets[i] for i in rows], device=inputs.device), **kwargs)
            if method.layer_shaped:
                maps = F.interpolate(maps.sum(dim=2), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
            for position, image in enumerate(rows):
                out[image] = maps[position].float().cpu()
            report((number + 1) / len(groups))
        return out
    except (TypeError, ValueError) as error:
        raise JobError("invalid_parameter", str(error), field) from None


def _scaled(report: Callable[[float], None], number: int, count: int) -> Callable[[float], None]:
    return lambda fraction: report((number + fraction) / count)


def _render(
    store: JobStore,
    spec: JobSpec,
    manifest: Any,
    photo: Image.Image,
    image: int,
    method: str,
    target: int,
    saliency: torch.Tensor,
) -> MapResult:
    values = saliency.numpy()
    result = MapResult(method=method, target=target, label=manifest.labels[target])
    options = spec.render
    base = f"/jobs/{spec.job_id}/maps/{image}/{method}/{target}.png"
    if "raw" in spec.outputs:
        half = values.astype("<f2")
        result.raw = RawMap(shape=values.shape, data=base64.b64encode(half.tobytes()).decode())
    if "heatmap" in spec.outputs:
        picture = heatmap(
            values, colormap=options.colormap, polarity=options.polarity, clip_percentile=options.clip_percentile
        )
        store.put_png(spec.job_id, f"{image}/{method}/{target}/heatmap", png_bytes(picture))
        result.heatmap_url = base
    if "overlay" in spec.outputs:
        on_photo = map_to_photo(values, photo.size, manifest.preprocessing)
        picture = overlay(
            on_photo,
            photo,
            alpha=options.alpha,
            colormap=options.colormap,
            polarity=options.polarity,
            clip_percentile=options.clip_percentile,
        )
        store.put_png(spec.job_id, f"{image}/{method}/{target}/overlay", png_bytes(picture))
        result.overlay_url = f"{base}?form=overlay"
    return result
