"""RISEPlus: RISE when every inlier score is 1, one backbone pass per batch, and a trained OoDNet's effect."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.lenet5 import LeNet5
from tests.nets import seeded
from tests.xai.test_contract import assert_same_state, hooks_of, state_of
from tests.xai.test_ood_net import synthetic, trained_ood_net
from workers.xai import RISE, OoDNet, RISEPlus

SOFTMAX = nn.Softmax(dim=1)
TARGETS = torch.tensor([[0, 3], [7, 9], [1, 1], [4, 2]])


class AllInliers(RISEPlus):
    """Every masked image counts fully: RISEPlus must then be RISE."""

    def inlier_scores(self, ood: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(ood)


class WithoutHead(nn.Module):
    """LeNet5's layers with no ``classify_features``: RISEPlus must take two passes."""

    def __init__(self, network: LeNet5) -> None:
        super().__init__()
        self.network = network
        self.num_features = network.num_features
        self.output_features = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.network.output_features = self.output_features
        try:
            return self.network(x)
        finally:
            self.network.output_features = False


def test_with_inlier_scores_of_one_it_is_rise(lenet, images):
    ood_net = OoDNet(lenet, 10)
    plus = AllInliers(ood_net, lenet, SOFTMAX, 30, num_masks=90, num_cells=5, seed=4)(images, TARGETS)
    rise = RISE(lenet, SOFTMAX, 30, num_masks=90, num_cells=5, seed=4)(images, TARGETS)
    torch.testing.assert_close(plus, rise, rtol=1e-5, atol=1e-5 * float(rise.abs().max()))


def test_inlier_scores_are_clipped_and_scaled_between_the_blank_and_the_image(lenet):
    plus = RISEPlus(OoDNet(lenet, 10), lenet, SOFTMAX)
    scores = plus.inlier_scores(torch.tensor([0.1, 0.2, 0.4, 0.6, 0.9]), torch.tensor(0.2), torch.tensor(0.6))
    torch.testing.assert_close(scores, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    flat = plus.inlier_scores(torch.tensor([0.1, 0.5]), torch.tensor(0.5), torch.tensor(0.5))
    assert torch.equal(flat, torch.zeros(2)), "image no more in-distribution than a blank: no weight (MindSpore)"


def test_the_weights_are_class_probability_times_inlier_score(lenet, images):
    """The map, rebuilt from the explainer's own masks and the OoDNet's scores, one mask at a time."""
    ood_net = OoDNet(lenet, 10)
    plus = RISEPlus(ood_net, lenet, SOFTMAX, num_masks=40, seed=2)
    ours = plus(images[:2], TARGETS[:2])
    masks = plus.masks_for(images)(torch.arange(40))
    expected = torch.zeros(2, 2, 32, 32)
    with torch.no_grad():
        low = ood_net.ood_score(torch.zeros(1, 3, 32, 32))
        for n in range(2):
            high = ood_net.ood_score(images[n : n + 1])
            for mask in masks:
                masked = images[n : n + 1] * mask
                inlier = ((ood_net.ood_score(masked).clamp(low, high) - low) / (high - low))[0]
                expected[n] += inlier * SOFTMAX(lenet(masked))[0, TARGETS[n], None, None] * mask
    expected /= 40 * 0.5
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_one_backbone_pass_per_batch_and_the_two_pass_fallback_agree(lenet, images):
    ood_net = OoDNet(lenet, 10)
    shared = RISEPlus(ood_net, lenet, SOFTMAX, 25, num_masks=50)
    assert shared.shares_backbone
    rows = []
    handle = lenet.conv1.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    try:
        shared(images[:1], TARGETS[:1])  # makes the forward twin, hook included, checked on one row
        rows.clear()
        one_pass = shared(images, TARGETS)
        shared_rows = sum(rows)
        rows.clear()
        wrapped = WithoutHead(lenet)
        same_heads = OoDNet(wrapped, 10)
        same_heads.load_state_dict(ood_net.state_dict())
        fallback = RISEPlus(same_heads, wrapped, SOFTMAX, 25, num_masks=50)
        assert not fallback.shares_backbone
        fallback(images[:1], TARGETS[:1])
        rows.clear()
        two_passes = fallback(images, TARGETS)
    finally:
        handle.remove()
    assert shared_rows == 1 + 4 + 4 * 50, "a blank, the images, then every masked image once"
    assert sum(rows) == 1 + 4 + 2 * 4 * 50, "the fallback runs the backbone twice per masked image"
    torch.testing.assert_close(one_pass, two_passes)


def test_a_trained_ood_net_changes_the_map():
    """Measured against RISE on the same masks: relative L2 difference 0.099, total weight x0.91, per-map
    Pearson correlation 0.78, 0.98, 0.94 — a change of shape, not only of scale. Asserted loosely."""
    ood_net = trained_ood_net()
    network = ood_net.underlying
    images, labels = synthetic(3, 7)
    plus = RISEPlus(ood_net, network, SOFTMAX, num_masks=300, num_cells=7)(images, labels)
    rise = RISE(network, SOFTMAX, num_masks=300, num_cells=7)(images, labels)
    assert plus.shape == rise.shape == (3, 1, 32, 32)
    assert float((plus - rise).norm() / rise.norm()) > 0.05
    correlations = [
        float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) for a, b in zip(plus, rise, strict=True)
    ]
    assert min(correlations) < 0.9
    assert float(plus.sum()) < float(rise.sum()), "inlier scores are <= 1: weights can only shrink"


def test_models_are_given_back_as_found(lenet, images):
    other = seeded(LeNet5, 1)
    other.train()
    lenet.train()
    lenet.fc1.weight.requires_grad_(False)
    before, before_other = state_of(lenet), state_of(other)
    for ood_net in (OoDNet(lenet, 10), OoDNet(other, 10)):
        RISEPlus(ood_net, lenet, SOFTMAX, num_masks=20)(images, 1)
        assert_same_state(before, state_of(lenet))
        assert_same_state(before_other, state_of(other))
        assert lenet.output_features is False and other.output_features is False
        assert hooks_of(lenet) == 0


def test_bad_arguments(lenet, images):
    with pytest.raises(TypeError, match="ood_net must be an OoDNet"):
        RISEPlus(lenet, lenet, SOFTMAX)
    with pytest.raises(TypeError, match="activation_fn must be callable"):
        RISEPlus(OoDNet(lenet, 10), lenet, 3)
    with pytest.raises(ValueError, match="num_masks must be >= 1"):
        RISEPlus(OoDNet(lenet, 10), lenet, SOFTMAX, num_masks=0)
    with pytest.raises(ValueError, match="targets must be < 10"):
        RISEPlus(OoDNet(lenet, 10), lenet, SOFTMAX, num_masks=5)(images, 12)
