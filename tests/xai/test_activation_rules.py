"""Deconvolution and GuidedBackprop on networks where module hooks go wrong.

The reference is the same network with each rectifier written by hand: its value is the
rectifier's, and a tensor hook on its output clips the incoming gradient at zero (guided), or a
straight-through trick passes that clipped gradient back regardless of the input (deconv).
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import Saliency
from torch import Tensor

from tests.nets import FunctionalNet, InPlaceNet, LeNet5, ReusedReLULeNet5, SmoothNet, seeded
from workers.xai import Deconvolution, Gradient, GuidedBackprop, GuidedGradCAM, RectifierTape

INF = float("inf")


def guided_reference(x: Tensor, upper: float) -> Tensor:
    y = x.clamp(0.0, upper)
    y.register_hook(lambda g: g.clamp(min=0))
    return y


def deconv_reference(x: Tensor, upper: float) -> Tensor:
    through = x.clamp(max=upper)  # gradient 1 below the upper clamp, whatever the sign of x
    y = through + (x.clamp(0.0, upper) - through).detach()
    y.register_hook(lambda g: g.clamp(min=0))
    return y


def reference_map(network: torch.nn.Module, activation, images: Tensor, targets: Tensor) -> Tensor:
    network.activation = activation
    try:
        x = images.clone().requires_grad_(True)
        network(x).gather(1, targets.view(-1, 1)).sum().backward()
    finally:
        network.activation = None
    return x.grad.abs().amax(dim=1, keepdim=True)


def assert_close(ours: Tensor, reference: Tensor) -> None:
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


@pytest.fixture
def functional_net() -> FunctionalNet:
    return seeded(FunctionalNet)


@pytest.fixture
def targets() -> Tensor:
    return torch.tensor([1, 4, 4, 8])


@pytest.mark.parametrize(
    ("explainer", "activation"), [(GuidedBackprop, guided_reference), (Deconvolution, deconv_reference)]
)
def test_rules_reach_functional_inplace_clamped_and_reused_activations(
    functional_net, images, targets, explainer, activation
):
    assert_close(explainer(functional_net)(images, targets), reference_map(functional_net, activation, images, targets))


def test_every_rectifier_call_is_caught(functional_net, images):
    with RectifierTape("guided") as tape:
        functional_net(images.requires_grad_(True))
    # in-place F.relu, the ReLU6 module twice, torch.relu, Tensor.relu
    assert tape.calls == 5


def test_the_plain_rule_is_autograd_gradient(functional_net, images, targets):
    x = images.clone().requires_grad_(True)
    functional_net(x).gather(1, targets.view(-1, 1)).sum().backward()
    with RectifierTape("plain"):
        y = images.clone().requires_grad_(True)
        out = functional_net(y)
    out.gather(1, targets.view(-1, 1)).sum().backward()
    torch.testing.assert_close(y.grad, x.grad)


@pytest.mark.parametrize(
    ("explainer", "activation"), [(GuidedBackprop, guided_reference), (Deconvolution, deconv_reference)]
)
def test_inplace_calls_whose_result_is_ignored_still_get_the_rule(images, targets, explainer, activation):
    network = seeded(InPlaceNet)
    ours = explainer(network)(images, targets)
    assert_close(ours, reference_map(network, activation, images, targets))
    assert not torch.allclose(ours, Gradient(network)(images, targets))


def test_seed_lenet_with_one_reused_relu_module_gets_the_rule_at_every_call(images, targets):
    """The seeds' LeNet5 calls ``self.relu`` four times; ours must equal the separate-module net."""
    separate = seeded(LeNet5)
    reused = ReusedReLULeNet5()
    reused.load_state_dict(separate.state_dict(), strict=False)
    reused.eval()
    for explainer in (GuidedBackprop, Deconvolution):
        assert_close(explainer(reused)(images, targets), explainer(separate)(images, targets))


def test_captum_silently_returns_the_plain_gradient_where_ours_does_not(functional_net, images, targets):
    """Captum hooks only ``nn.ReLU`` modules: on functional ReLUs and ReLU6 it is the plain gradient."""
    captum = CaptumGuidedBackprop(functional_net).attribute(images, target=targets).abs().amax(dim=1, keepdim=True)
    plain = Saliency(functional_net).attribute(images, target=targets).amax(dim=1, keepdim=True)
    ours = GuidedBackprop(functional_net)(images, targets)
    reference = reference_map(functional_net, guided_reference, images, targets)
    assert_close(captum, plain)
    assert_close(ours, reference)
    assert float((ours - captum).abs().max()) > 0.1 * float(reference.abs().max())


@pytest.mark.parametrize("explainer", [GuidedBackprop, Deconvolution])
def test_a_network_without_rectifiers_is_refused(images, explainer):
    with pytest.raises(ValueError, match="found no ReLU"):
        explainer(seeded(SmoothNet))(images, 0)


def test_guided_gradcam_refuses_a_network_without_rectifiers(images):
    with pytest.raises(ValueError, match="found no ReLU"):
        GuidedGradCAM(seeded(SmoothNet), "conv")(images, 0)


def test_rectifiers_outside_the_tape_are_untouched(functional_net, images):
    """The mode is active only inside the block and only on this thread."""
    with RectifierTape("guided") as tape:
        pass
    functional_net(images.requires_grad_(True))
    assert tape.calls == 0
