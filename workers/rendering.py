"""A job's maps in the forms the client asked for: raw float16 in the result; for heatmaps and
overlays, the map's values stored beside the job, for the API to render as PNG when they are asked
for (``core/render.py``), off the job's path."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np

from core.contract import JobSpec, MapResult, RawMap
from core.render import map_bytes
from models.manifest import Manifest

PutMap = Callable[[str, bytes], None]  # (name, the map's values) -> stored under the job


def map_result(
    spec: JobSpec, manifest: Manifest, image: int, method: str, target: int, values: np.ndarray, put_map: PutMap
) -> MapResult:
    """One (H, W) map of image ``image``, method ``method``, class ``target`` in every form asked for."""
    result = MapResult(method=method, target=target, label=manifest.labels[target])
    base = f"/jobs/{spec.job_id}/maps/{image}/{method}/{target}.png"
    if "raw" in spec.outputs:
        half = values.astype("<f2")
        result.raw = RawMap(shape=values.shape, data=base64.b64encode(half.tobytes()).decode())
    if "heatmap" in spec.outputs or "overlay" in spec.outputs:
        put_map(f"{image}/{method}/{target}", map_bytes(values))
    if "heatmap" in spec.outputs:
        result.heatmap_url = base
    if "overlay" in spec.outputs:
        result.overlay_url = f"{base}?form=overlay"
    return result
