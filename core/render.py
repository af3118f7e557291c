"""Saliency maps to images: perceptual colormaps, a heatmap PNG and an overlay on the photo.

Works on numpy arrays (no torch), so whatever produced the map, rendering is the same; the API
renders a job's stored maps when a client asks for them (``GET /jobs/{id}/maps/...png``).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

from core.contract import RenderOptions
from models.manifest import Preprocessing
from models.preprocessing import map_to_photo

Polarity = Literal["absolute", "positive", "negative"]
Colormap = Literal["inferno", "viridis", "gray"]

# Perceptually uniform colormaps sampled at 9 evenly spaced points; linear interpolation between
# them stays monotonic in lightness, which is what makes a heatmap read correctly.
_KNOTS = {
    "inferno": [(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
                (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164)],
    "viridis": [(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
                (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)],
    "gray": [(0, 0, 0), (255, 255, 255)],
}  # fmt: skip


def _table(knots: list[tuple[int, int, int]]) -> np.ndarray:
    points = np.asarray(knots, dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(points))
    samples = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(samples, positions, points[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


COLORMAPS: dict[str, np.ndarray] = {name: _table(knots) for name, knots in _KNOTS.items()}


def normalise(saliency: np.ndarray, *, polarity: Polarity = "absolute", clip_percentile: float = 99.5) -> np.ndarray:
    """(H, W) map -> values in [0, 1]; values above the ``clip_percentile`` saturate."""
    if saliency.ndim != 2:
        raise ValueError(f"saliency must be a 2-D (H, W) map, got shape {saliency.shape}")
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    values = saliency.astype(np.float64)
    values = {
        "absolute": np.abs(values),
        "positive": np.clip(values, 0, None),
        "negative": np.clip(-values, 0, None),
    }[polarity]
    top = np.percentile(values, clip_percentile)
    if not np.isfinite(top) or top <= 0:
        return np.zeros_like(values)
    return np.clip(values / top, 0.0, 1.0)


def colorize(unit: np.ndarray, colormap: Colormap = "inferno") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB."""
    return COLORMAPS[colormap][np.round(unit * 255).astype(np.intp)]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap(
    saliency: np.ndarray,
    *,
    colormap: Colormap = "inferno",
    polarity: Polarity = "absolute",
    clip_percentile: float = 99.5,
) -> Image.Image:
    """The map in the colormap, at the map's own size."""
    unit = normalise(saliency, polarity=polarity, clip_percentile=clip_percentile)
    return Image.fromarray(colorize(unit, colormap))


def overlay(
    saliency: np.ndarray,
    photo: Image.Image,
    *,
    alpha: float = 0.5,
    colormap: Colormap = "inferno",
    polarity: Polarity = "absolute",
    clip_percentile: float = 99.5,
) -> Image.Image:
    """The heatmap blended over the photo; a map of another size is resized to the photo's."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    colored = heatmap(saliency, colormap=colormap, polarity=polarity, clip_percentile=clip_percentile)
    if colored.size != photo.size:
        colored = colored.resize(photo.size, Image.Resampling.BILINEAR)
    return Image.blend(photo.convert("RGB"), colored, alpha)


def map_bytes(values: np.ndarray) -> bytes:
    """A map's values as stored for rendering: float32 ``.npy`` (float16 would flush the tiny values of
    gradient maps to zero)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(values, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def map_from_bytes(data: bytes) -> np.ndarray:
    values = np.load(io.BytesIO(data), allow_pickle=False)
    if values.ndim != 2 or values.dtype != np.float32:
        raise ValueError(f"a stored map must be a 2-D float32 array, got {values.dtype} {values.shape}")
    return values


def map_png(
    values: np.ndarray,
    options: RenderOptions,
    *,
    photo: Image.Image | None = None,
    preprocessing: Preprocessing | None = None,
) -> bytes:
    """The PNG of a map: its heatmap at the map's size, or, given the photo and the model's
    preprocessing, the map laid over the part of the photo the network saw."""
    shown = dict(colormap=options.colormap, polarity=options.polarity, clip_percentile=options.clip_percentile)
    if photo is None:
        return png_bytes(heatmap(values, **shown))
    if preprocessing is None:
        raise ValueError("an overlay needs the model's preprocessing")
    on_photo = map_to_photo(values, photo.size, preprocessing)
    return png_bytes(overlay(on_photo, photo, alpha=options.alpha, **shown))
