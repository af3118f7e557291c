"""RISE against a plain reference computation, its masks, and the shared perturbation core.

The reference rebuilds every mask the textbook way — bilinear upsampling of the stored grid with
``F.interpolate`` and a crop at the stored shift — and sums ``f_c(I ⊙ M) · M / (K · p)`` one mask at
a time. It agrees with the batched matrix-product form up to float32 rounding: ``rtol=1e-5`` and an
``atol`` of 1e-5 of the map's largest magnitude.
"""

from __future__ import annotations

import gc
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.xai.test_contract import assert_same_state, hooks_of, state_of
from workers.xai import RISE, Occlusion
from workers.xai.rise import MAX_MASKS, MaskSet, mask_set

SOFTMAX = nn.Softmax(dim=1)
TARGETS = torch.tensor([0, 3, 7, 9])
CPU = torch.device("cpu")


def reference_masks(height: int, width: int, count: int, cells: int, probability: float, seed: int) -> torch.Tensor:
    """(K, H, W): each mask by ``F.interpolate`` of its grid and a crop, one at a time."""
    masks = mask_set(height, width, count, cells, probability, seed, CPU)
    up = ((cells + 1) * math.ceil(height / cells), (cells + 1) * math.ceil(width / cells))
    out = []
    for k in range(count):
        big = F.interpolate(masks.grids[k].float()[None, None], size=up, mode="bilinear", align_corners=False)[0, 0]
        dy, dx = int(masks.shifts_h[k]), int(masks.shifts_w[k])
        out.append(big[dy : dy + height, dx : dx + width])
    return torch.stack(out)


def reference_rise(network, inputs, targets, masks, probability) -> torch.Tensor:
    """(N, L, H, W) by the definition, one masked forward at a time."""
    total = torch.zeros(len(inputs), targets.shape[1], *inputs.shape[2:])
    with torch.no_grad():
        for n in range(len(inputs)):
            for mask in masks:
                scores = SOFTMAX(network(inputs[n : n + 1] * mask))[0, targets[n]]
                total[n] += scores[:, None, None] * mask
    return total / (len(masks) * probability)


def assert_maps_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    scale = float(reference.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * scale)


def test_masks_are_the_upsampled_and_cropped_grids():
    masks = mask_set(32, 30, 300, 7, 0.3, 5, CPU)
    expanded = masks(torch.arange(300))
    torch.testing.assert_close(expanded, reference_masks(32, 30, 300, 7, 0.3, 5), rtol=1e-6, atol=1e-6)
    assert expanded.shape == (300, 32, 30)
    assert float(expanded.min()) >= 0 and float(expanded.max()) <= 1 + 1e-6
    assert set(masks.grids.unique().tolist()) == {0.0, 1.0}
    assert abs(float(masks.grids.float().mean()) - 0.3) < 0.02  # 14,700 Bernoulli(0.3) cells: sd 0.004
    assert int(masks.shifts_h.max()) == math.ceil(32 / 7) - 1 and int(masks.shifts_h.min()) == 0
    assert int(masks.shifts_w.max()) == math.ceil(30 / 7) - 1


def test_a_mask_set_keeps_grids_and_shifts_not_masks():
    """1,000 masks at 224x224 with 10x10 cells: a byte per cell and two 2-byte shifts, not 191 MiB of masks."""
    assert MaskSet(224, 224, 1000, 10, 0.5, 0, CPU).nbytes() == 1000 * (10 * 10 + 2 * 2)


def test_rise_equals_the_reference_computation(lenet, images):
    images, targets = images[:2], torch.tensor([[0, 5], [3, 3]])
    ours = RISE(lenet, SOFTMAX, 37, num_masks=100, num_cells=6, keep_probability=0.4, seed=3)(images, targets)
    masks = reference_masks(32, 32, 100, 6, 0.4, 3)
    assert_maps_close(ours, reference_rise(lenet, images, targets, masks, 0.4))


def test_rise_on_the_cat_equals_the_reference(efficientnet, cat_input):
    ours = RISE(efficientnet, SOFTMAX, 3, num_masks=6, seed=1)(cat_input, torch.tensor([[285, 281]]))
    masks = reference_masks(224, 224, 6, 10, 0.5, 1)
    assert_maps_close(ours, reference_rise(efficientnet, cat_input, torch.tensor([[285, 281]]), masks, 0.5))


@pytest.mark.parametrize(
    ("targets", "shape"),
    [
        (3, (4, 1, 32, 32)),
        (torch.tensor(3), (4, 1, 32, 32)),
        (torch.tensor([0, 1, 2, 3]), (4, 1, 32, 32)),
        (torch.tensor([[0, 5, 2]] * 4), (4, 3, 32, 32)),
    ],
)
def test_target_forms(lenet, images, targets, shape):
    maps = RISE(lenet, SOFTMAX, num_masks=50)(images, targets)
    assert maps.shape == shape and maps.dtype == images.dtype
    assert bool(torch.isfinite(maps).all())


def test_same_seed_same_map_other_seed_other_map_and_the_masks_are_cached(lenet, images):
    first = RISE(lenet, SOFTMAX, num_masks=64, seed=7)(images, TARGETS)
    assert torch.equal(first, RISE(lenet, SOFTMAX, num_masks=64, seed=7)(images, TARGETS))
    assert not torch.allclose(first, RISE(lenet, SOFTMAX, num_masks=64, seed=8)(images, TARGETS))
    assert mask_set(32, 32, 64, 10, 0.5, 7, CPU) is mask_set(32, 32, 64, 10, 0.5, 7, CPU)
    unseeded = RISE(lenet, SOFTMAX, num_masks=64, seed=None)
    assert not torch.allclose(unseeded(images, TARGETS), unseeded(images, TARGETS))


def test_an_image_gets_the_same_map_alone_and_in_a_batch(lenet, images):
    explainer = RISE(lenet, SOFTMAX, 48, num_masks=100)
    batch = explainer(images, TARGETS)
    for i in range(len(images)):
        torch.testing.assert_close(explainer(images[i : i + 1], TARGETS[i : i + 1]), batch[i : i + 1])


def test_maps_are_normal_tensors_and_the_inputs_are_untouched(lenet, images):
    original = images.clone()
    maps = RISE(lenet, SOFTMAX, num_masks=20)(images, 1)
    assert torch.equal(images, original)
    assert not maps.is_inference() and not maps.requires_grad
    maps += 1  # an inference tensor would refuse this outside inference mode


# ---- the shared core, on Occlusion and RISE ----

EXPLAINERS = {
    "occlusion": lambda net, per_eval=None, **options: Occlusion(
        net, SOFTMAX, per_eval, window=8, strides=4, **options
    ),
    "rise": lambda net, per_eval=None, **options: RISE(net, SOFTMAX, per_eval, num_masks=49, **options),
}


@pytest.mark.parametrize("name", EXPLAINERS)
def test_progress_is_reported_after_every_batch(lenet, images, name):
    seen = []
    EXPLAINERS[name](lenet, 10)(images, TARGETS, progress=seen.append)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[-1] == 1.0 and 0 < seen[0] < 1
    assert len(seen) == math.ceil(len(images) * 49 / 10)  # 49 windows (7 x 7) or 49 masks per image


@pytest.mark.parametrize("name", EXPLAINERS)
def test_raising_from_progress_cancels_and_the_model_is_given_back(lenet, images, name):
    lenet.train()
    lenet.conv1.weight.requires_grad_(False)
    before = state_of(lenet)

    class Cancelled(Exception):
        pass

    seen = []

    def cancel(fraction: float) -> None:
        seen.append(fraction)
        if fraction > 0.3:
            raise Cancelled

    with pytest.raises(Cancelled):
        EXPLAINERS[name](lenet, 10)(images, TARGETS, progress=cancel)
    assert 0.3 < seen[-1] < 1
    assert_same_state(before, state_of(lenet))
    assert hooks_of(lenet) == 0
    with pytest.raises(TypeError, match="progress must be a callable"):
        EXPLAINERS[name](lenet)(images, TARGETS, progress=0.5)


class RunsOutOfMemory(nn.Module):
    """Raises CUDA's out-of-memory error for a batch above ``limit``: what a small GPU does."""

    def __init__(self, network: nn.Module, limit: int) -> None:
        super().__init__()
        self.network, self.limit, self.batches = network, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch of {len(x)})")
        return self.network(x)


@pytest.mark.parametrize("name", EXPLAINERS)
def test_out_of_memory_halves_the_batch_and_gives_the_same_map(lenet, images, name):
    expected = EXPLAINERS[name](lenet, 64, inference_copy=False)(images, TARGETS)
    small_gpu = RunsOutOfMemory(lenet, limit=20)
    explainer = EXPLAINERS[name](small_gpu, 64, inference_copy=False)  # the batches it sees are its own
    torch.testing.assert_close(explainer(images, TARGETS), expected, rtol=1e-5, atol=1e-7)
    assert 64 in small_gpu.batches and 32 in small_gpu.batches and max(small_gpu.batches[-3:]) <= 16
    small_gpu.batches.clear()
    explainer(images, TARGETS)
    assert max(small_gpu.batches) <= 16, "the next call starts at the size that fitted"
    with pytest.raises(torch.cuda.OutOfMemoryError):
        EXPLAINERS[name](RunsOutOfMemory(lenet, limit=0), 4, inference_copy=False)(images, TARGETS)


@pytest.mark.parametrize("name", EXPLAINERS)
def test_more_targets_cost_no_more_forward_passes(lenet, images, name):
    rows = []
    handle = lenet.conv1.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    try:
        EXPLAINERS[name](lenet)(images[:1], 0)  # makes the forward twin, hook included, checked on one row
        rows.clear()
        EXPLAINERS[name](lenet)(images, TARGETS)
        one = list(rows)
        rows.clear()
        EXPLAINERS[name](lenet)(images, torch.stack([TARGETS, TARGETS.flip(0), TARGETS // 2, 1 + TARGETS // 2], 1))
    finally:
        handle.remove()
    assert rows == one and sum(one) >= 4 * 49


@pytest.mark.parametrize("name", EXPLAINERS)
def test_memory_does_not_grow_over_many_calls(lenet, images, name):
    explainer = EXPLAINERS[name](lenet)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if type(obj) in (torch.Tensor, nn.Parameter))

    explainer(images, TARGETS)
    baseline = live_tensors()
    for _ in range(20):
        explainer(images, TARGETS)
    assert live_tensors() == baseline


# ---- errors ----


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_masks": 0}, ValueError, "num_masks must be >= 1"),
        ({"num_masks": MAX_MASKS + 1}, ValueError, f"num_masks must be <= {MAX_MASKS}"),
        ({"num_masks": 10.0}, TypeError, "num_masks must be an int"),
        ({"num_cells": 0}, ValueError, "num_cells must be >= 1"),
        ({"keep_probability": 0.0}, ValueError, r"keep_probability must be within \(0, 1\)"),
        ({"keep_probability": 1.0}, ValueError, r"keep_probability must be within \(0, 1\)"),
        ({"keep_probability": 1.5}, ValueError, "keep_probability must be within"),
        ({"keep_probability": "half"}, TypeError, "keep_probability must be a number"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
def test_bad_constructor_arguments(lenet, kwargs, error, message):
    with pytest.raises(error, match=message):
        RISE(lenet, SOFTMAX, **kwargs)


def test_bad_activation_batch_size_and_targets(lenet, images):
    with pytest.raises(TypeError, match="activation_fn must be callable"):
        RISE(lenet, None)
    with pytest.raises(TypeError, match="perturbation_per_eval must be an int"):
        RISE(lenet, SOFTMAX, 2.0)
    with pytest.raises(ValueError, match="targets must be < 10"):
        RISE(lenet, SOFTMAX, num_masks=10)(images, torch.tensor([[1, 10]] * 4))
    with pytest.raises(ValueError, match="non-negative"):
        RISE(lenet, SOFTMAX, num_masks=10)(images, -1)


def test_with_a_tolerance_an_image_stops_at_its_converged_masks_and_equals_the_reference(lenet, images):
    """A map that stopped at K masks is RISE over the first K masks of the set, by the definition."""
    settled = RISE(lenet, SOFTMAX, num_masks=1000, seed=5, tolerance=1e6)  # every map "converged" at once
    early = settled(images, TARGETS)
    assert settled.masks_used == [500] * len(images), "no image stops before 500 masks"
    masks = reference_masks(32, 32, 1000, 10, 0.5, 5)[:500]
    assert_maps_close(early, reference_rise(lenet, images, TARGETS[:, None], masks, 0.5))


def test_a_tolerance_never_met_uses_every_mask(lenet, images):
    strict = RISE(lenet, SOFTMAX, num_masks=1000, seed=5, tolerance=1e-12)
    full = RISE(lenet, SOFTMAX, num_masks=1000, seed=5)
    assert_maps_close(strict(images, TARGETS), full(images, TARGETS))
    assert strict.masks_used == full.masks_used == [1000] * len(images)


def test_images_stop_on_their_own_and_the_early_maps_are_the_full_ones(registry):
    """On lenet5-shapes and its shapes: each image stops when its own map is precise enough.

    The decision compares an estimated error with a tolerance, so the counts may move by a block on
    another CPU; what must hold is that some stop early, others do not, and early maps are the full ones
    up to the tolerance (correlation of the centred maps > 0.95; measured >= 0.98 at 0.2,
    docs/benchmarks.md)."""
    from models.shapes import generate

    network = registry.network("lenet5-shapes")
    shapes = torch.from_numpy(generate(8, 3).normalised())
    targets = network(shapes).argmax(dim=1)
    full = RISE(network, SOFTMAX, num_masks=6000)(shapes, targets)
    early_rise = RISE(network, SOFTMAX, num_masks=6000, tolerance=0.3)
    early = early_rise(shapes, targets)
    assert min(early_rise.masks_used) < 6000, early_rise.masks_used
    assert all(used % 500 == 0 or used == 6000 for used in early_rise.masks_used)
    centred = [(m - m.mean(dim=(2, 3), keepdim=True)).flatten(1) for m in (full, early)]
    correlation = (centred[0] * centred[1]).sum(1) / (centred[0].norm(dim=1) * centred[1].norm(dim=1))
    assert float(correlation.min()) > 0.95, correlation
