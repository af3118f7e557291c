"""Occlusion against Captum's (the oracle), the defaults, and the errors.

Captum's Occlusion with a window over every channel gives the same value in every channel, so we
compare its channel 0 with our (N, 1, H, W) map. Both compute ``mean over covering windows of
(p - p_occluded)`` in float32, in a different summation order, and ours runs the masked batches
through the network's BatchNorm-folded, channels_last twin, whose probabilities differ from the
network's by float rounding (up to ~1e-6 on EfficientNet-Lite0): ``rtol=1e-5`` and an ``atol`` of
1e-5 of the map's largest magnitude plus 2e-6.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from tests.xai.test_contract import assert_same_state, hooks_of, state_of
from workers.xai import Occlusion
from workers.xai.occlusion import default_window

SOFTMAX = nn.Softmax(dim=1)
TARGETS = torch.tensor([0, 3, 7, 9])


def captum_map(network, inputs, targets, window, strides, reference=0.0, activation=SOFTMAX) -> torch.Tensor:
    """Captum's (N, 1, H, W) map for (N,) targets, the window spanning all channels."""
    channels = inputs.shape[1]
    baselines = reference.view(1, -1, 1, 1) if isinstance(reference, torch.Tensor) else reference
    attribution = CaptumOcclusion(lambda x: activation(network(x))).attribute(
        inputs,
        sliding_window_shapes=(channels, *window),
        strides=(channels, *strides),
        baselines=baselines,
        target=targets,
        perturbations_per_eval=64,
    )
    torch.testing.assert_close(attribution[:, :1].expand_as(attribution), attribution)  # same in every channel
    return attribution[:, :1]


def assert_maps_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    scale = float(reference.abs().max())
    assert scale > 0, "a reference map of zeros would make the comparison vacuous"
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * scale + 2e-6)


@pytest.mark.parametrize(
    ("window", "strides", "reference"),
    [
        ((4, 4), (4, 4), 0.0),  # tiles
        ((5, 5), (3, 3), 0.0),  # overlapping, the last window cut at the edge
        ((8, 6), (8, 4), 0.5),  # different per side, a constant reference
        ((3, 3), (1, 1), torch.tensor([0.1, -0.2, 0.3])),  # a value per channel
    ],
)
def test_lenet_matches_captum(lenet, images, window, strides, reference):
    ours = Occlusion(lenet, SOFTMAX, 7, window=window, strides=strides, reference=reference)(images, TARGETS)
    assert_maps_close(ours, captum_map(lenet, images, TARGETS, window, strides, reference))


def test_every_target_column_matches_captum_and_comes_from_the_same_passes(lenet, images):
    targets = torch.tensor([[0, 5, 9], [1, 2, 3], [4, 4, 0], [9, 8, 7]])
    calls = []
    handle = lenet.conv1.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    try:
        Occlusion(lenet, SOFTMAX)(images[:1], 0)  # makes the forward twin, hook included, checked on one row
        calls.clear()
        ours = Occlusion(lenet, SOFTMAX, 50, window=(6, 6), strides=(4, 4))(images, targets)
        rows_for_three = sum(calls)
        calls.clear()
        Occlusion(lenet, SOFTMAX, 50, window=(6, 6), strides=(4, 4))(images, targets[:, 0])
    finally:
        handle.remove()
    assert rows_for_three == sum(calls) == 4 * (1 + 8 * 8), "one unoccluded pass plus 64 windows per image"
    assert ours.shape == (4, 3, 32, 32)
    for column in range(3):
        reference = captum_map(lenet, images, targets[:, column], (6, 6), (4, 4))
        assert_maps_close(ours[:, column : column + 1], reference)


def test_sigmoid_and_any_callable_as_activation(lenet, images):
    ours = Occlusion(lenet, torch.sigmoid, window=4)(images, TARGETS)
    assert_maps_close(ours, captum_map(lenet, images, TARGETS, (4, 4), (4, 4), activation=torch.sigmoid))


def test_efficientnet_on_the_cat_matches_captum(efficientnet, cat_input):
    """Overlapping 64x64 windows every 48 pixels (25 windows, the last row and column cut at the edge)."""
    targets = torch.tensor([[285, 281]])
    ours = Occlusion(efficientnet, SOFTMAX, 13, window=64, strides=48)(cat_input, targets)
    for column in range(2):
        reference = captum_map(efficientnet, cat_input, targets[:, column], (64, 64), (48, 48))
        assert_maps_close(ours[:, column : column + 1], reference)
    assert not torch.allclose(ours[0, 0], ours[0, 1])


def test_defaults_are_mindspores_window_rule(lenet, images):
    assert default_window(224) == (7, 7)  # 32 x 32 = 1,024 tiles
    assert default_window(32) == (3, 1)  # 30 x 30 = 900 windows
    assert default_window(2) == (2, 1)
    ours = Occlusion(lenet, SOFTMAX)(images, TARGETS)
    assert_maps_close(ours, captum_map(lenet, images, TARGETS, (3, 3), (1, 1)))


def test_strides_default_to_the_window(lenet, images):
    torch.testing.assert_close(
        Occlusion(lenet, SOFTMAX, window=(4, 8))(images, 1),
        Occlusion(lenet, SOFTMAX, window=(4, 8), strides=(4, 8))(images, 1),
    )


def test_absolute_is_the_magnitude_of_the_signed_map(lenet, images):
    signed = Occlusion(lenet, SOFTMAX, window=4)(images, TARGETS)
    assert bool((signed < 0).any()) and bool((signed > 0).any()), "the signed map should have both signs here"
    torch.testing.assert_close(Occlusion(lenet, SOFTMAX, window=4, absolute=True)(images, TARGETS), signed.abs())


def test_a_per_image_reference(lenet, images):
    """A (N, C, 1, 1) reference (e.g. each image's mean) is applied to its own image."""
    means = images.mean(dim=(2, 3), keepdim=True)
    batch = Occlusion(lenet, SOFTMAX, window=8, reference=means)(images, TARGETS)
    for i in range(len(images)):
        alone = Occlusion(lenet, SOFTMAX, window=8, reference=means[i])(images[i : i + 1], TARGETS[i : i + 1])
        torch.testing.assert_close(alone, batch[i : i + 1])


def test_the_batch_size_does_not_change_the_map(lenet, images):
    maps = [Occlusion(lenet, SOFTMAX, size, window=6, strides=4)(images, TARGETS) for size in (1, 9, 1000)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-7)


def test_channels_last_inputs_give_the_same_map(lenet, images):
    contiguous = Occlusion(lenet, SOFTMAX, window=4)(images, TARGETS)
    channels_last = Occlusion(lenet, SOFTMAX, window=4)(images.contiguous(memory_format=torch.channels_last), TARGETS)
    torch.testing.assert_close(channels_last, contiguous, rtol=1e-5, atol=1e-7)


def test_the_model_is_given_back_as_found(lenet, images):
    lenet.train()
    lenet.fc1.weight.requires_grad_(False)
    before = state_of(lenet)
    maps = Occlusion(lenet, SOFTMAX, window=8)(images, 1)
    assert_same_state(before, state_of(lenet))
    assert hooks_of(lenet) == 0
    assert not maps.is_inference() and not maps.requires_grad


# ---- errors ----


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"window": 0}, ValueError, "window must be >= 1"),
        ({"window": 4, "strides": 0}, ValueError, "strides must be >= 1"),
        ({"window": (4, 4, 4)}, ValueError, r"window must be an int or a pair"),
        ({"window": 2.5}, TypeError, "window must be an int"),
        ({"reference": "grey"}, TypeError, "reference must be a number or a tensor"),
        ({"reference": float("nan")}, ValueError, "reference must be finite"),
        ({"absolute": 1}, TypeError, "absolute must be a bool"),
    ],
)
def test_bad_constructor_arguments(lenet, kwargs, error, message):
    with pytest.raises(error, match=message):
        Occlusion(lenet, SOFTMAX, **kwargs)


def test_bad_activation_and_batch_size(lenet):
    with pytest.raises(TypeError, match="activation_fn must be callable"):
        Occlusion(lenet, "softmax")
    with pytest.raises(ValueError, match="perturbation_per_eval must be >= 1"):
        Occlusion(lenet, SOFTMAX, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 33}, r"window \(33, 33\) is larger than the image \(32, 32\)"),
        ({"window": (4, 40)}, "window .* is larger than the image"),
        ({"window": 4, "strides": 5}, "strides .* must not exceed the window"),
        ({"reference": torch.zeros(2)}, r"reference of shape \(2,\) does not broadcast"),
        ({"reference": torch.zeros(4, 3, 31, 1)}, "does not broadcast"),
    ],
)
def test_bad_values_for_this_image(lenet, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Occlusion(lenet, SOFTMAX, **kwargs)(images, 1)


def test_targets_out_of_range_and_a_bad_activation_output(lenet, images):
    with pytest.raises(ValueError, match="targets must be < 10"):
        Occlusion(lenet, SOFTMAX, window=8)(images, 10)
    with pytest.raises(ValueError, match=r"activation_fn must return an \(N, num_classes\) tensor"):
        Occlusion(lenet, lambda logits: logits.sum(1), window=8)(images, 1)
