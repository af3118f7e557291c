"""Photo -> input and map -> photo, by the manifest's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.manifest import Preprocessing
from models.preprocessing import crop_box, map_to_photo, preprocess, to_rgb

STRETCH = Preprocessing(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
CROP = Preprocessing(size=(224, 224), resize="center_crop", resize_shorter_to=256, mean=(0, 0, 0), std=(1, 1, 1))


@pytest.mark.parametrize(
    "image",
    [
        Image.new("P", (10, 8)),
        Image.new("L", (10, 8), 128),
        Image.new("LA", (10, 8), (128, 0)),
        Image.new("RGBA", (10, 8), (10, 20, 30, 255)),
        Image.new("CMYK", (10, 8), (0, 0, 0, 0)),
        Image.new("I;16", (10, 8), 65535),
        Image.new("1", (10, 8), 1),
        np.zeros((8, 10), np.uint8),
        np.zeros((8, 10, 1), np.uint8),
    ],
)
def test_every_mode_becomes_8_bit_rgb(image):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.size == (10, 8)


def test_16_bit_grey_keeps_its_range_and_transparency_becomes_white():
    assert to_rgb(Image.new("I;16", (2, 2), 65535)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("I;16", (2, 2), 32768)).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("shape", "message"), [((8, 10, 4), "got 4"), ((8, 10, 2), "got 2"), ((2, 8, 10, 3), "got 4-D")]
)
def test_arrays_with_the_wrong_number_of_channels_are_refused(shape, message):
    with pytest.raises(ValueError, match=f"image must have 1 or 3 channels.*{message}"):
        to_rgb(np.zeros(shape, np.uint8))


def test_float_arrays_and_other_objects_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        to_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match=r"PIL\.Image or a numpy array"):
        to_rgb("cat.jpg")


def test_preprocess_normalises_in_channel_order():
    image = Image.new("RGB", (40, 20), (255, 0, 128))
    x = preprocess(image, STRETCH)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25], atol=1e-6)
    bgr = preprocess(image, STRETCH.model_copy(update={"channel_order": "BGR"}))
    np.testing.assert_allclose(bgr[::-1], x)


def test_center_crop_sees_the_middle_of_the_photo():
    assert crop_box((400, 300), CROP) == (69, 19, 331, 281)  # 300 -> 256, so 224 is 262.5 px of the photo
    assert crop_box((400, 300), STRETCH) == (0, 0, 400, 300)
    photo = Image.new("RGB", (400, 300), (0, 0, 0))
    photo.paste((255, 255, 255), (0, 0, 60, 300))  # a white stripe the crop leaves out
    assert preprocess(photo, CROP).max() == 0.0


@pytest.mark.parametrize("spec", [STRETCH, CROP])
def test_a_map_lands_where_its_pixels_came_from(spec):
    photo_size = (400, 300)
    height, width = spec.size
    saliency = np.zeros((height, width), np.float32)
    saliency[: height // 4, : width // 4] = 1.0  # the top-left of what the network saw
    on_photo = map_to_photo(saliency, photo_size, spec)
    assert on_photo.shape == (300, 400)
    left, top, right, bottom = crop_box(photo_size, spec)
    row, col = np.unravel_index(np.nanargmax(on_photo), on_photo.shape)
    assert top <= row < top + (bottom - top) // 4 and left <= col < left + (right - left) // 4
    assert np.isnan(on_photo[:, :left]).all() and np.isnan(on_photo[:top]).all(), "not seen: NaN"
    assert np.isfinite(on_photo[top:bottom, left:right]).all()
