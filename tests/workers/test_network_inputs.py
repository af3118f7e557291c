"""The worker's batch of network inputs is each photo's ``preprocess``, stacked, in the layout jobs run in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.manifest import Preprocessing
from models.preprocessing import preprocess
from workers.network_inputs import network_inputs

IMAGENET = Preprocessing(
    size=(48, 40), resize="center_crop", resize_shorter_to=56, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
SPECS = [
    IMAGENET,
    IMAGENET.model_copy(update={"channel_order": "BGR"}),
    Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3),
]


@pytest.mark.parametrize("spec", SPECS, ids=["rgb", "bgr", "stretch"])
def test_a_batch_is_each_photo_preprocessed(spec):
    """To 1e-6: one multiply-add in float32 against numpy's subtract-then-divide, on values within ±3."""
    rng = np.random.default_rng(0)
    photos = [
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)),  # grey: made RGB
        rng.integers(0, 256, (50, 61, 3), dtype=np.uint8),  # an array, as the OoD noise is
    ]
    batch = network_inputs(photos, spec)
    expected = torch.from_numpy(np.stack([preprocess(photo, spec) for photo in photos]))
    assert batch.shape == (3, 3, *spec.size) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch, expected, rtol=0, atol=1e-6)
