"""A job's maps as the client asked for them: raw float16, and PNG heatmaps / overlays in the store."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
from PIL import Image

from core.contract import JobSpec, MapResult, RawMap
from models.manifest import Manifest
from models.preprocessing import map_to_photo
from workers.render import heatmap, overlay, png_bytes

PutPng = Callable[[str, bytes], None]  # (name, png) -> stored under the job


def render_map(
    spec: JobSpec,
    manifest: Manifest,
    photo: Image.Image,
    image: int,
    method: str,
    target: int,
    values: np.ndarray,
    put_png: PutPng,
) -> MapResult:
    """One (H, W) map of image ``image``, method ``method``, class ``target`` in every form asked for."""
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
        put_png(f"{image}/{method}/{target}/heatmap", png_bytes(picture))
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
        put_png(f"{image}/{method}/{target}/overlay", png_bytes(picture))
        result.overlay_url = f"{base}?form=overlay"
    return result
