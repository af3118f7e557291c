"""The bundled lenet5-shapes: its stated accuracy is measured, and training reproduces it."""

from __future__ import annotations

import re

import torch

from models.registry import BUNDLED
from models.shapes import generate
from models.train_shapes import EPOCHS, TEST_SEED, TRAIN_COUNT, accuracy, train

STATED = float(re.search(r"held-out accuracy ([0-9.]+)%", (BUNDLED / "lenet5-shapes" / "manifest.toml").read_text())[1])


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    data = generate(10_000, TEST_SEED)
    return torch.from_numpy(data.normalised()), torch.from_numpy(data.labels)


def test_the_committed_weights_have_the_stated_accuracy(registry):
    assert STATED >= 95.0
    measured = accuracy(registry.network("lenet5-shapes"), *held_out()) * 100
    # Another CPU rounds the last bits of some logits differently; an image whose two best classes are
    # that close can flip. 0.05 points = 5 of 10,000 images.
    assert abs(measured - STATED) < 0.05


def test_training_from_scratch_reproduces_the_accuracy_within_a_point():
    """The manifest's command, run again (about two minutes on two cores)."""
    _, reproduced = train(EPOCHS, TRAIN_COUNT, log=False)
    assert abs(reproduced * 100 - STATED) < 1.0
