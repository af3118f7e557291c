"""The forward-only twin the perturbation explainers run: folding, caching, and every way out of it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.xai.test_contract import assert_same_state, state_of
from workers.xai import RISE, Occlusion
from workers.xai import _inference_copy as inference_copy
from workers.xai._inference_copy import fold_batchnorm, forward_twin

original = inference_copy._make_twin

SOFTMAX = nn.Softmax(dim=1)


class ConvNormNet(nn.Module):
    """conv -> BatchNorm -> ReLU twice, then a linear head; BatchNorm statistics made non-trivial."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.conv1, self.norm1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.norm2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)
        generator = torch.Generator().manual_seed(0)
        for norm in (self.norm1, self.norm2):
            norm.running_mean.copy_(torch.randn(8, generator=generator))
            norm.running_var.copy_(torch.rand(8, generator=generator) + 0.5)
            norm.weight.data.copy_(torch.randn(8, generator=generator))
            norm.bias.data.copy_(torch.randn(8, generator=generator))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        y = self.conv2(x)
        x = torch.relu(self.norm2(y) + y if self.residual else self.norm2(y))
        return self.head(x.mean((2, 3)))


class BranchesOnData(ConvNormNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return super().forward(x)


class DropsItsBias(nn.Conv2d):
    """A convolution whose forward ignores ``self.bias``: folding a BatchNorm into it would be wrong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, None)


def test_folds_each_norm_into_its_convolution_and_gives_the_same_outputs():
    network, x = ConvNormNet(), torch.randn(4, 3, 16, 16)
    twin = forward_twin(network, x, channels_last=True)
    assert isinstance(twin, ConvNormNet) and twin is not network
    assert isinstance(twin.norm1, nn.Identity) and isinstance(twin.norm2, nn.Identity)
    assert twin.conv2.bias is not None and twin.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(twin(x.contiguous(memory_format=torch.channels_last)), network(x))
    assert isinstance(network.norm1, nn.BatchNorm2d) and network.conv2.bias is None, "the original is untouched"


def test_a_norm_whose_input_is_used_elsewhere_is_not_folded():
    network = ConvNormNet(residual=True)
    twin = copy.deepcopy(network)
    assert fold_batchnorm(twin) == 1
    assert isinstance(twin.norm1, nn.Identity) and isinstance(twin.norm2, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(twin(x), network(x))


def test_a_convolution_called_under_two_names_is_not_folded():
    class Shared(ConvNormNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.norm1(self.conv1(x))
            return self.head((self.conv1b(x) + y).mean((2, 3)))

    shared = Shared()
    shared.conv1b = shared.conv1  # one module under two names, each called once
    assert fold_batchnorm(copy.deepcopy(ConvNormNet())) == 2
    twin = copy.deepcopy(shared)
    assert fold_batchnorm(twin) == 0, "folding norm1 into conv1 would change what conv1b gives"
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(twin(x), shared(x))


def test_efficientnet_lite0_loses_its_49_norms_not_its_answers(efficientnet, cat_input):
    assert fold_batchnorm(copy.deepcopy(efficientnet)) == 49
    twin = forward_twin(efficientnet, cat_input, channels_last=True)
    with torch.inference_mode():
        expected = SOFTMAX(efficientnet(cat_input))
        found = SOFTMAX(twin(cat_input.contiguous(memory_format=torch.channels_last)))
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=2e-6)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in efficientnet.modules()) == 49


def test_the_twin_is_cached_and_made_again_when_the_weights_change(lenet, images):
    before = state_of(lenet)
    explainer = Occlusion(lenet, SOFTMAX, window=8)
    first = explainer(images, 3)
    twin = explainer.forward_network
    assert twin is not lenet
    explainer(images, 3)
    assert explainer.forward_network is twin, "the same weights reuse the twin"
    assert_same_state(before, state_of(lenet))
    with torch.no_grad():
        lenet.fc3.weight[3] *= -1  # in place: the parameter is the same object, its version moves
    changed = explainer(images, 3)
    assert explainer.forward_network is not twin
    assert not torch.allclose(changed, first)
    plain = Occlusion(lenet, SOFTMAX, window=8, inference_copy=False)
    torch.testing.assert_close(changed, plain(images, 3), rtol=1e-5, atol=1e-6)
    assert plain.forward_network is lenet


def test_a_network_that_does_not_trace_is_copied_without_folding(images):
    network = BranchesOnData()
    assert fold_batchnorm(copy.deepcopy(network)) == 0
    explainer = RISE(network, SOFTMAX, num_masks=20)
    maps = explainer(images, 1)
    assert isinstance(explainer.forward_network.norm1, nn.BatchNorm2d)
    torch.testing.assert_close(maps, RISE(network, SOFTMAX, num_masks=20, inference_copy=False)(images, 1))


def test_a_twin_that_answers_differently_is_not_used_nor_made_again(images, monkeypatch):
    network = ConvNormNet()
    network.conv1 = DropsItsBias(3, 8, 3, padding=1)
    made = []
    monkeypatch.setattr(inference_copy, "_make_twin", lambda *args: made.append(args) or original(*args))
    assert forward_twin(network, images, channels_last=False) is network
    assert forward_twin(network, images, channels_last=False) is network
    assert len(made) == 1, "the refusal is cached like a twin"


def test_a_network_made_under_inference_mode_runs_as_it_is(images):
    with torch.inference_mode():
        network = ConvNormNet()
    assert forward_twin(network, images, channels_last=True) is network


def test_inference_copy_must_be_a_bool(lenet):
    with pytest.raises(TypeError, match="inference_copy must be a bool"):
        RISE(lenet, SOFTMAX, inference_copy=1)
