"""Decode uploaded image files safely: size limits, EXIF orientation, first frame, RGB.

Pillow only. The API decodes every upload once, before accepting a job (a bad image is a 4xx
naming it), and stores the RGB pixels the worker reads.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.preprocessing import to_rgb


class ImageRejected(ValueError):
    """An upload that is not a usable image; the message says why."""


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """bytes of an image file -> an RGB ``PIL.Image`` the right way up."""
    if not data:
        raise ImageRejected("the file is empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"the file has {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(f"the image has {width}x{height} pixels, more than the limit of {max_pixels}")
            if width == 0 or height == 0:
                raise ImageRejected(f"the image is {width}x{height}")
            image.seek(0)  # animations: the first frame
            image.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:  # Pillow's message names the buffer object, a heap address
        raise ImageRejected(
            "not an image in a format this service reads (JPEG, PNG, GIF, WebP, BMP, TIFF, ...)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(f"not a supported image: {_plain(error)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # truncated or corrupt data
        raise ImageRejected(f"the image cannot be decoded (truncated or corrupt): {_plain(error)}") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: the image is ours, and a copy costs
        return to_rgb(image)
    except (OSError, ValueError) as error:
        raise ImageRejected(f"the image cannot be converted to RGB: {error}") from None


def _plain(error: BaseException) -> str:
    """An exception's message without object reprs or file paths: it goes to the client."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the upload", str(error))
    return re.sub(r"(?:/[\w.+-]+){2,}", "(a path)", text)


def photo_of(pixels: bytes, size: tuple[int, int]) -> Image.Image:
    """The RGB photo the API decoded, from its stored pixels (no second decode)."""
    return Image.frombuffer("RGB", size, pixels, "raw", "RGB", 0, 1)


MASK_MAX_BYTES, MASK_MAX_PIXELS = 1 << 20, 1 << 22  # a region mask: 1 MB, 2048x2048


def decode_mask(text: str) -> np.ndarray:
    """A base64 image file -> (H, W) float32 weights in [0, 1] (its grey levels / 255). ImageRejected when it
    is not an image, is too large, or weighs nothing anywhere."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("not valid base64") from None
    grey = decode_image(data, max_bytes=MASK_MAX_BYTES, max_pixels=MASK_MAX_PIXELS).convert("L")
    weights = np.asarray(grey, dtype=np.float32) / 255.0
    if not weights.any():
        raise ImageRejected("the mask is black everywhere: it covers no position")
    return weights
