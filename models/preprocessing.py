"""Photo -> network input, and saliency map -> photo, as a manifest's ``preprocessing`` says.

numpy and Pillow only (no torch): the API uses the same code to check and convert uploads.
Decoding is the caller's; this starts from a decoded ``PIL.Image`` or an (H, W[, 3]) array.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from models.manifest import Preprocessing

Box = tuple[int, int, int, int]  # left, top, right, bottom in the photo's pixels


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """Any Pillow mode (palette, grey, grey+alpha, RGBA, CMYK, 16-bit, float) or an (H, W) /
    (H, W, 3) array -> an 8-bit RGB image. Transparent pixels are composited on white."""
    if isinstance(image, np.ndarray):
        image = _from_array(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image or a numpy array, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image must not be empty, got {image.width}x{image.height}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        channels = 1
    elif array.ndim == 3 and array.shape[2] == 3:
        channels = 3
    else:
        got = array.shape[2] if array.ndim == 3 else f"{array.ndim}-D"
        raise ValueError(f"image must have 1 or 3 channels (H, W[, C]), got {got} (shape {array.shape})")
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8, got {array.dtype}")
    return Image.fromarray(array.reshape(array.shape[0], array.shape[1]) if channels == 1 else array)


def crop_box(photo_size: tuple[int, int], spec: Preprocessing) -> Box:
    """The part of the photo (width, height) that the network sees."""
    width, height = photo_size
    if spec.resize == "stretch":
        return 0, 0, width, height
    scale = spec.resize_shorter_to / min(width, height)  # type: ignore[operator]
    out_h, out_w = spec.size
    crop_w, crop_h = min(width, out_w / scale), min(height, out_h / scale)
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return round(left), round(top), round(left + crop_w), round(top + crop_h)


def network_pixels(image: Image.Image | np.ndarray, spec: Preprocessing) -> np.ndarray:
    """(H, W, 3) uint8: the photo as the network sees it before normalisation (cropped and resized, in the
    manifest's channel order)."""
    photo = to_rgb(image)
    out_h, out_w = spec.size
    seen = photo.crop(crop_box(photo.size, spec)) if spec.resize == "center_crop" else photo
    pixels = np.asarray(seen.resize((out_w, out_h), Image.Resampling.BILINEAR))
    return pixels[..., ::-1] if spec.channel_order == "BGR" else pixels


def channel_statistics(spec: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """The manifest's (mean, std) as float32, in its channel order."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return (mean[::-1], std[::-1]) if spec.channel_order == "BGR" else (mean, std)


def preprocess(image: Image.Image | np.ndarray, spec: Preprocessing) -> np.ndarray:
    """(3, H, W) float32, normalised, in the manifest's channel order."""
    pixels = network_pixels(image, spec).astype(np.float32) / 255.0
    mean, std = channel_statistics(spec)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def map_to_photo(saliency: np.ndarray, photo_size: tuple[int, int], spec: Preprocessing) -> np.ndarray:
    """An (H, W) map over the network's input -> (height, width) over the original photo.

    The map is resized (bilinear) onto the part of the photo the network saw; the rest of the
    photo, which the network never saw, is NaN (renderers mark it as not seen).
    """
    if saliency.ndim != 2:
        raise ValueError(f"saliency must be a 2-D (H, W) map, got shape {saliency.shape}")
    width, height = photo_size
    left, top, right, bottom = crop_box(photo_size, spec)
    resized = Image.fromarray(saliency.astype(np.float32), mode="F").resize(
        (right - left, bottom - top), Image.Resampling.BILINEAR
    )
    canvas = np.full((height, width), np.nan, dtype=np.float32)
    canvas[top:bottom, left:right] = np.asarray(resized)
    return canvas
