"""Invariants every explainer keeps: shapes, model state, hooks, batch invariance, errors."""

from __future__ import annotations

import gc

import pytest
import torch
from captum.attr import LayerGradCam
from torch import nn

from tests.nets import LeNet5, TwiceNet, seeded
from workers.xai import (
    Deconvolution,
    GradCAM,
    Gradient,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    LayerGradientXActivation,
    SmoothGrad,
)

INPUT_SPACE = {
    "gradient": lambda net: Gradient(net),
    "deconvolution": lambda net: Deconvolution(net),
    "guided_backprop": lambda net: GuidedBackprop(net),
    "input_x_gradient": lambda net: InputXGradient(net),
    "integrated_gradients": lambda net: IntegratedGradients(net, steps=5, internal_batch_size=6),
    "smoothgrad": lambda net: SmoothGrad(net, samples=4, seed=3, internal_batch_size=5),
    "gradcam": lambda net: GradCAM(net, "conv2"),
    "gradcam_input": lambda net: GradCAM(net),
    "guided_gradcam": lambda net: GuidedGradCAM(net, "conv2"),
}
ALL = {**INPUT_SPACE, "layer_gradient_x_activation": lambda net: LayerGradientXActivation(net, ["conv1", "fc2"])}


def hooks_of(network: nn.Module) -> int:
    return sum(
        len(getattr(module, attr))
        for module in network.modules()
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def state_of(network: nn.Module) -> tuple:
    return (
        [module.training for module in network.modules()],
        [param.requires_grad for param in network.parameters()],
        {name: value.clone() for name, value in network.state_dict().items()},
    )


def assert_same_state(before: tuple, after: tuple) -> None:
    assert before[0] == after[0]
    assert before[1] == after[1]
    for name, value in before[2].items():
        assert torch.equal(value, after[2][name]), name


@pytest.fixture
def odd_state_lenet(lenet) -> nn.Module:
    """Training mode in part, some parameters frozen: the state a caller may well leave it in."""
    lenet.train()
    lenet.conv1.eval()
    lenet.fc1.weight.requires_grad_(False)
    return lenet


@pytest.mark.parametrize("name", INPUT_SPACE)
@pytest.mark.parametrize(
    ("targets", "shape"),
    [
        (3, (4, 1, 32, 32)),
        (torch.tensor(3), (4, 1, 32, 32)),
        ([0, 1, 2, 3], (4, 1, 32, 32)),
        (torch.tensor([0, 1, 2, 3]), (4, 1, 32, 32)),
        (torch.tensor([[0, 5]] * 4), (4, 2, 32, 32)),
    ],
)
def test_shapes_for_every_target_form(lenet, images, name, targets, shape):
    maps = INPUT_SPACE[name](lenet)(images, targets)
    assert maps.shape == shape
    assert maps.dtype == images.dtype
    assert bool(torch.isfinite(maps).all())


@pytest.mark.parametrize("name", ALL)
def test_the_model_is_given_back_as_found(odd_state_lenet, images, name):
    before, hooks = state_of(odd_state_lenet), hooks_of(odd_state_lenet)
    explainer = ALL[name](odd_state_lenet)
    explainer(images, 2)
    assert explainer.network is odd_state_lenet, "the caller's model must not be copied"
    assert_same_state(before, state_of(odd_state_lenet))
    assert hooks_of(odd_state_lenet) == hooks
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("name", ALL)
def test_the_model_is_given_back_as_found_after_an_error(odd_state_lenet, images, name):
    before = state_of(odd_state_lenet)
    explainer = ALL[name](odd_state_lenet)
    with pytest.raises(ValueError, match="targets must be < 10"):
        explainer(images, 10)

    def explode(module, args):
        raise RuntimeError("boom")

    handle = odd_state_lenet.fc1.register_forward_pre_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        explainer(images, 1)
    handle.remove()
    assert_same_state(before, state_of(odd_state_lenet))
    assert hooks_of(odd_state_lenet) == 0
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("name", INPUT_SPACE)
def test_an_image_gets_the_same_map_alone_and_in_a_batch(lenet, images, name):
    """Float rounding aside, batching changes nothing (measured: at most 3e-7 of the map's maximum)."""
    explainer = INPUT_SPACE[name](lenet)
    targets = torch.tensor([3, 1, 4, 1])
    batch = explainer(images, targets)
    for i in range(len(images)):
        alone = explainer(images[i : i + 1], targets[i : i + 1])
        torch.testing.assert_close(alone, batch[i : i + 1], rtol=1e-5, atol=1e-6 * float(batch.abs().max()))


@pytest.mark.parametrize("name", INPUT_SPACE)
def test_the_inputs_are_not_touched(lenet, images, name):
    original = images.clone()
    INPUT_SPACE[name](lenet)(images, 1)
    assert torch.equal(images, original)
    assert not images.requires_grad


def test_smoothgrad_same_seed_same_map_other_seed_other_map(lenet, images):
    first = SmoothGrad(lenet, samples=4, seed=7)(images, 1)
    assert torch.equal(first, SmoothGrad(lenet, samples=4, seed=7)(images, 1))
    assert not torch.allclose(first, SmoothGrad(lenet, samples=4, seed=8)(images, 1))


def test_memory_does_not_grow_over_many_calls(lenet, images):
    explainers = [make(lenet) for make in ALL.values()]

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if type(obj) is torch.Tensor or type(obj) is nn.Parameter)

    for explainer in explainers:
        explainer(images, 1)
    baseline = live_tensors()
    for _ in range(20):
        for explainer in explainers:
            explainer(images, 1)
    assert live_tensors() == baseline


# ---- errors: TypeError for a wrong type, ValueError for a wrong value, naming the argument ----


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        ([[1.0]], TypeError, "inputs must be a torch.Tensor"),
        (torch.zeros(3, 32, 32), ValueError, "inputs must be a 4-D tensor"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.long), TypeError, "inputs must be a floating-point"),
        (torch.zeros(0, 3, 32, 32), ValueError, "inputs must not be empty"),
    ],
)
def test_bad_inputs(lenet, name, inputs, error, message):
    with pytest.raises(error, match=message):
        ALL[name](lenet)(inputs, 1)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("targets", "error", "message"),
    [
        (1.5, TypeError, "targets must be an int"),
        (True, TypeError, "got bool"),
        ("cat", TypeError, "targets must be an int"),
        (torch.tensor([1.0, 2.0, 3.0, 4.0]), TypeError, "integer tensor"),
        (torch.tensor([1, 2]), ValueError, "length 4"),
        ([1, 2, 3], ValueError, "length 4"),
        ([1, 2, 3, "x"], TypeError, "only ints"),
        (torch.zeros(4, 1, 1, dtype=torch.long), ValueError, "0-D, 1-D or 2-D"),
        (torch.zeros(3, 2, dtype=torch.long), ValueError, r"shape \(N=4"),
        (-1, ValueError, "non-negative"),
        (10, ValueError, r"targets must be < 10"),
    ],
)
def test_bad_targets(lenet, images, name, targets, error, message):
    with pytest.raises(error, match=message):
        ALL[name](lenet)(images, targets)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda net: Gradient("net"), TypeError, "network must be a torch.nn.Module"),
        (lambda net: GradCAM(net, "conv9"), ValueError, "layer 'conv9' is not a module"),
        (lambda net: GradCAM(net, 3), TypeError, "layer must be a dotted module name"),
        (lambda net: GradCAM(net, nn.Conv2d(1, 1, 1)), ValueError, "layer must be a submodule"),
        (lambda net: GuidedGradCAM(net, "nope"), ValueError, "layer 'nope'"),
        (lambda net: LayerGradientXActivation(net, []), ValueError, "at least one layer"),
        (lambda net: LayerGradientXActivation(net, ["conv1", "x.y"]), ValueError, "layer 'x.y'"),
        (
            lambda net: LayerGradientXActivation(net, "conv1", multiply_by_inputs=1),
            TypeError,
            "multiply_by_inputs must be a bool",
        ),
        (
            lambda net: LayerGradientXActivation(net, "conv1", attribute_to_layer_input="no"),
            TypeError,
            "attribute_to_layer_input",
        ),
        (lambda net: IntegratedGradients(net, steps=0), ValueError, "steps must be >= 1"),
        (lambda net: IntegratedGradients(net, steps=1, method="riemann_left"), ValueError, "steps must be >= 2"),
        (lambda net: IntegratedGradients(net, steps=2.5), TypeError, "steps must be an int"),
        (lambda net: IntegratedGradients(net, method="simpson"), ValueError, "method must be one of"),
        (lambda net: IntegratedGradients(net, baseline="black"), TypeError, "baseline must be a number or a tensor"),
        (lambda net: IntegratedGradients(net, baseline=float("nan")), ValueError, "baseline must be finite"),
        (lambda net: IntegratedGradients(net, internal_batch_size=0), ValueError, "internal_batch_size must be >= 1"),
        (lambda net: SmoothGrad(net, samples=0), ValueError, "samples must be >= 1"),
        (lambda net: SmoothGrad(net, noise_level=-0.1), ValueError, "noise_level must be within"),
        (lambda net: SmoothGrad(net, noise_level="high"), TypeError, "noise_level must be a number"),
        (lambda net: SmoothGrad(net, seed=-1), ValueError, "seed must be >= 0"),
    ],
)
def test_bad_constructor_arguments(lenet, make, error, message):
    with pytest.raises(error, match=message):
        make(lenet)


def test_a_baseline_that_does_not_broadcast_is_refused(lenet, images):
    with pytest.raises(ValueError, match="baseline of shape"):
        IntegratedGradients(lenet, baseline=torch.zeros(2, 5, 5))(images, 1)


def test_a_tensor_baseline_is_used_per_pixel(lenet, images):
    baseline = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    tensor_maps = IntegratedGradients(lenet, baseline=baseline, steps=8)(images, 1)
    assert not torch.allclose(tensor_maps, IntegratedGradients(lenet, steps=8)(images, 1))


def test_gradcam_needs_a_spatial_layer(lenet, images):
    with pytest.raises(ValueError, match="4-D"):
        GradCAM(lenet, "fc1")(images, 1)


def test_a_network_that_does_not_return_scores_is_refused(images):
    with pytest.raises(ValueError, match=r"\(N, num_classes\)"):
        Gradient(nn.Conv2d(3, 2, 3))(images, 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda net: GradCAM(net, "conv"),
        lambda net: GuidedGradCAM(net, "conv"),
        lambda net: LayerGradientXActivation(net, "conv"),
    ],
)
def test_a_layer_that_runs_twice_is_refused(images, make):
    with pytest.raises(ValueError, match="ran 2 times in one forward pass"):
        make(seeded(TwiceNet))(images, 0)


def test_captum_silently_uses_the_last_call_of_a_layer_that_runs_twice(images):
    """What the refusal above protects against: Captum answers, for the second call only."""
    network = seeded(TwiceNet)
    attribution = LayerGradCam(network, network.conv).attribute(images, target=0)
    assert attribution.shape == (4, 1, 32, 32)


def test_a_layer_given_as_a_module_is_the_same_as_by_name(lenet, images):
    torch.testing.assert_close(GradCAM(lenet, lenet.conv2)(images, 1), GradCAM(lenet, "conv2")(images, 1))


def test_a_layer_off_the_output_path_has_zero_attribution(images):
    network = seeded(LeNet5)
    network.unused = nn.Conv2d(3, 3, 1)
    original_forward = network.forward
    network.forward = lambda x: (network.unused(x), original_forward(x))[1]
    attribution = LayerGradientXActivation(network, "unused")(images, 1)
    assert attribution.shape == (4, 3, 32, 32)
    assert not bool(attribution.any())
