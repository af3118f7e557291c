"""The synthetic shapes: deterministic, with masks that are the labelled object."""

from __future__ import annotations

import numpy as np
import pytest

from models.manifest import read_manifest
from models.registry import BUNDLED
from models.shapes import CLASSES, MEAN, STD, generate


def test_the_same_seed_gives_the_same_images_and_another_seed_others():
    first, again, other = generate(64, seed=11), generate(64, seed=11, chunk=7), generate(64, seed=12)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.masks, again.masks)
    assert not np.array_equal(first.images, other.images)


def test_shapes_batch_layout():
    batch = generate(500, seed=0)
    assert batch.images.shape == (500, 32, 32, 3) and batch.images.dtype == np.uint8
    assert batch.masks.shape == (500, 32, 32) and batch.masks.dtype == bool
    assert set(np.unique(batch.labels)) == set(range(len(CLASSES)))
    area = batch.masks.reshape(500, -1).sum(1)
    assert area.min() >= 8 and area.max() <= 32 * 32 // 2


def test_the_mask_is_where_the_shape_differs_from_its_surroundings():
    batch = generate(200, seed=5, distractor_rate=0.0)
    pixels = batch.images.astype(float)
    inside = np.array([pixels[i][batch.masks[i]].std(axis=0).mean() for i in range(200)])
    contrast = np.array(
        [np.abs(pixels[i][batch.masks[i]].mean(0) - pixels[i][~batch.masks[i]].mean(0)).max() for i in range(200)]
    )
    assert np.median(inside) < 20  # one flat colour, pixel noise (sd 7.6) and anti-aliased edges
    assert np.median(contrast) > 60  # against a background of other colours


def test_unseen_shapes_are_available_for_out_of_distribution_probes():
    batch = generate(10, seed=0, shapes=("heart",))
    assert (batch.labels == 0).all() and batch.masks.any(axis=(1, 2)).all()
    with pytest.raises(ValueError, match="shapes must be among"):
        generate(10, seed=0, shapes=("hexagon",))


def test_the_manifest_normalises_as_the_training_does():
    spec = read_manifest(BUNDLED / "lenet5-shapes" / "manifest.toml").preprocessing
    assert spec.mean == MEAN and spec.std == STD
