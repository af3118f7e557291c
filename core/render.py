"""Saliency maps to images: perceptual colormaps, a heatmap PNG and an overlay on the photo.

Works on numpy arrays (no torch), so whatever produced the map, rendering is the same; the API
renders a job's stored maps when a client asks for them (``GET /jobs/{id}/maps/...png``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.contract import RenderOptions
from models.manifest import Preprocessing
from models.preprocessing import map_to_photo

Polarity = Literal["absolute", "positive", "negative", "both"]
Colormap = Literal["inferno", "viridis", "gray", "coolwarm"]

# Perceptually uniform colormaps sampled at 9 evenly spaced points; linear interpolation between
# them stays monotonic in lightness, which is what makes a heatmap read correctly. ``coolwarm`` is
# diverging (blue, a light neutral at its middle, red): signed maps with 0 at the middle.
_KNOTS = {
    "inferno": [(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
                (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164)],
    "viridis": [(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
                (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)],
    "gray": [(0, 0, 0), (255, 255, 255)],
    "coolwarm": [(59, 76, 192), (98, 130, 234), (141, 176, 254), (184, 208, 249), (221, 221, 221),
                 (245, 196, 173), (244, 154, 123), (222, 96, 77), (180, 4, 38)],
}  # fmt: skip
DIVERGING = "coolwarm"  # what polarity "both" is drawn in unless a colormap is asked for


def _table(knots: list[tuple[int, int, int]]) -> np.ndarray:
    points = np.asarray(knots, dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(points))
    samples = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(samples, positions, points[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


COLORMAPS: dict[str, np.ndarray] = {name: _table(knots) for name, knots in _KNOTS.items()}


@dataclass(frozen=True)
class Scale:
    """How a map's values became [0, 1]: ``low`` and ``high`` (map units) are drawn at 0 and 1."""

    low: float
    high: float


def normalise(
    saliency: np.ndarray,
    *,
    polarity: Polarity = "absolute",
    clip_percentile: float = 99.5,
    clip_lower_percentile: float = 0.5,
    fixed: tuple[float, float] | None = None,
) -> tuple[np.ndarray, Scale]:
    """(H, W) map -> (values in [0, 1], the scale). NaN (a pixel the network did not see) stays NaN.

    One-sided polarities (``absolute``, ``positive``, ``negative``): the ``clip_lower_percentile`` of the
    values is drawn at 0 and the ``clip_percentile`` at 1, what lies outside saturates — a floor as well
    as a ceiling, so a map with an offset (RISE's probabilities, all between 0.56 and 0.73) shows its
    structure instead of a uniform wash. ``both``: signed, 0 at the middle, ``±`` the ``clip_percentile``
    of ``|values|`` at the ends. ``fixed``: (low, high) instead of percentiles (a scale shared by maps)."""
    if saliency.ndim != 2:
        raise ValueError(f"saliency must be a 2-D (H, W) map, got shape {saliency.shape}")
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    if not 0 <= clip_lower_percentile < clip_percentile:
        raise ValueError(f"clip_lower_percentile must be in [0, clip_percentile), got {clip_lower_percentile}")
    values = saliency.astype(np.float64)
    values = {
        "absolute": np.abs(values),
        "positive": np.clip(values, 0, None),
        "negative": np.clip(-values, 0, None),
        "both": values,
    }[polarity]
    seen = values[np.isfinite(values)]
    if seen.size == 0:
        return np.full_like(values, np.nan), Scale(0.0, 0.0)
    if polarity == "both":
        top = max(abs(fixed[0]), abs(fixed[1])) if fixed else float(np.percentile(np.abs(seen), clip_percentile))
        if not top > 0:
            return np.where(np.isnan(values), np.nan, 0.5), Scale(-top, top)
        return 0.5 + 0.5 * np.clip(values / top, -1.0, 1.0), Scale(-top, top)
    low, high = fixed or (float(np.percentile(seen, q)) for q in (clip_lower_percentile, clip_percentile))
    if not high > low:
        return np.where(np.isnan(values), np.nan, 0.0), Scale(low, high)
    return np.clip((values - low) / (high - low), 0.0, 1.0), Scale(low, high)


def colorize(unit: np.ndarray, colormap: Colormap = "inferno") -> np.ndarray:
    """(H, W) values in [0, 1] (NaN: not seen) -> (H, W, 3) uint8 RGB; not-seen pixels hatched grey."""
    finite = np.isfinite(unit)
    rgb = COLORMAPS[colormap][np.round(np.where(finite, unit, 0.0) * 255).astype(np.intp)]
    if not finite.all():
        rows, columns = np.indices(unit.shape)
        hatch = np.where(((rows + columns) // 4) % 2 == 0, 96, 160).astype(np.uint8)
        rgb[~finite] = hatch[~finite, None]
    return rgb


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap(
    saliency: np.ndarray,
    *,
    colormap: Colormap | None = None,
    polarity: Polarity = "absolute",
    clip_percentile: float = 99.5,
    clip_lower_percentile: float = 0.5,
    transparent: bool = False,
    colorbar: bool = False,
    fixed: tuple[float, float] | None = None,
) -> Image.Image:
    """The map in the colormap (default: ``inferno``, ``coolwarm`` for ``both``), at the map's own size.
    ``transparent``: RGBA whose opacity is the value's strength (for an overlay drawn elsewhere), the
    not-seen pixels fully transparent; else RGB, the not-seen pixels hatched grey. ``colorbar``: a bar
    with the values at its ends beside the map."""
    image, _, _ = _drawn(
        saliency, colormap, polarity, clip_percentile, clip_lower_percentile, fixed, transparent, colorbar
    )
    return image


def _drawn(
    saliency: np.ndarray,
    colormap: Colormap | None,
    polarity: Polarity,
    clip_percentile: float,
    clip_lower_percentile: float,
    fixed: tuple[float, float] | None,
    transparent: bool,
    colorbar: bool,
) -> tuple[Image.Image, Colormap, Scale]:
    """The heatmap (with its colour bar if asked), the colormap it was drawn in, and the scale."""
    colormap = colormap or (DIVERGING if polarity == "both" else "inferno")
    unit, scale = normalise(
        saliency,
        polarity=polarity,
        clip_percentile=clip_percentile,
        clip_lower_percentile=clip_lower_percentile,
        fixed=fixed,
    )
    rgb = colorize(unit, colormap)
    if transparent:
        strength = np.abs(unit - 0.5) * 2 if polarity == "both" else unit
        alpha = np.round(np.nan_to_num(strength, nan=0.0) * 255).astype(np.uint8)
        image = Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")
    else:
        image = Image.fromarray(rgb)
    return (with_colorbar(image, colormap, scale) if colorbar else image), colormap, scale


def with_colorbar(image: Image.Image, colormap: Colormap, scale: Scale) -> Image.Image:
    """The image with a vertical colour bar at its right, the scale's high value at the top, low at the bottom."""
    height = image.height
    bar_width, gap, label_width = max(8, height // 20), 4, 56
    canvas = Image.new(image.mode, (image.width + gap + bar_width + label_width, max(height, 24)), _WHITE[image.mode])
    canvas.paste(image, (0, 0))
    ramp = COLORMAPS[colormap][np.linspace(255, 0, height).round().astype(np.intp)]
    bar = np.repeat(ramp[:, None, :], bar_width, axis=1)
    if image.mode == "RGBA":
        bar = np.dstack([bar, np.full(bar.shape[:2], 255, np.uint8)])
    canvas.paste(Image.fromarray(bar, mode=image.mode), (image.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x = image.width + gap + bar_width + 3
    draw.text((x, 0), f"{scale.high:.3g}", fill=_INK[image.mode], font=font)
    draw.text((x, max(height, 24) - 12), f"{scale.low:.3g}", fill=_INK[image.mode], font=font)
    return canvas


_WHITE = {"RGB": (255, 255, 255), "RGBA": (255, 255, 255, 0)}
_INK = {"RGB": (0, 0, 0), "RGBA": (0, 0, 0, 255)}


def overlay(
    saliency: np.ndarray,
    photo: Image.Image,
    *,
    alpha: float = 0.5,
    colormap: Colormap | None = None,
    polarity: Polarity = "absolute",
    clip_percentile: float = 99.5,
    clip_lower_percentile: float = 0.5,
    colorbar: bool = False,
    fixed: tuple[float, float] | None = None,
) -> Image.Image:
    """The heatmap blended over the photo; a map of another size is resized to the photo's. Pixels the
    network did not see (NaN) show the photo greyed and dimmed, with no heatmap over them."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    colored, colormap, scale = _drawn(
        saliency, colormap, polarity, clip_percentile, clip_lower_percentile, fixed, transparent=False, colorbar=False
    )
    if colored.size != photo.size:
        colored = colored.resize(photo.size, Image.Resampling.BILINEAR)
    base = photo.convert("RGB")
    blended = np.asarray(Image.blend(base, colored, alpha)).copy()
    unseen = ~np.isfinite(saliency)
    if unseen.shape == blended.shape[:2] and unseen.any():
        grey = np.asarray(base.convert("L"), dtype=np.float64) * 0.5 + 40
        blended[unseen] = grey[unseen, None].astype(np.uint8)
    image = Image.fromarray(blended)
    return with_colorbar(image, colormap, scale) if colorbar else image


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
    photo_size: tuple[int, int] | None = None,
    photo: Image.Image | None = None,
    preprocessing: Preprocessing | None = None,
) -> bytes:
    """The PNG of a map. A heatmap at the photo's size (``photo_size`` (width, height) and the model's
    preprocessing given, and ``options.size == "photo"``): the map laid back over the part of the photo the
    network saw, the rest marked not seen; else at the map's own size. An overlay (``photo`` given): the
    map over the photo."""
    shown = dict(
        colormap=options.colormap,
        polarity=options.polarity,
        clip_percentile=options.clip_percentile,
        clip_lower_percentile=options.clip_lower_percentile,
        colorbar=options.colorbar,
        fixed=options.scale,
    )
    if photo is None:
        if photo_size is not None and preprocessing is not None and options.size == "photo":
            values = map_to_photo(values, photo_size, preprocessing)
        return png_bytes(heatmap(values, transparent=options.transparent, **shown))
    if preprocessing is None:
        raise ValueError("an overlay needs the model's preprocessing")
    on_photo = map_to_photo(values, photo.size, preprocessing)
    return png_bytes(overlay(on_photo, photo, alpha=options.alpha, **shown))
