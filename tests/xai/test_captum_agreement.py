"""Our explainers against Captum's, on a LeNet5 whose ReLUs are separate modules.

There Captum's module hooks are correct, so the two must agree up to float32 rounding: both do
the same multiply-adds in the same precision but not always in the same order (our gradients are
taken for a whole target column at once, Captum's per call, channels-summing orders differ). We
compare with ``rtol=1e-5`` and an ``atol`` of 1e-5 of the map's largest magnitude, i.e. ~100 ulp
of float32 at the scale of the map: far below any visible difference, far above rounding noise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import (
    Deconvolution as CaptumDeconvolution,
)
from captum.attr import (
    GuidedBackprop as CaptumGuidedBackprop,
)
from captum.attr import (
    GuidedGradCam,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from captum.attr import (
    InputXGradient as CaptumInputXGradient,
)
from captum.attr import (
    IntegratedGradients as CaptumIntegratedGradients,
)
from captum.attr import (
    LayerGradientXActivation as CaptumLayerGradientXActivation,
)

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

TARGETS = torch.tensor([0, 3, 7, 9])


def assert_maps_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    reference = reference.detach()
    scale = float(reference.abs().max())
    assert scale > 0, "a reference map of zeros would make the comparison vacuous"
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * scale)


def channel_abs_max(attribution: torch.Tensor) -> torch.Tensor:
    return attribution.abs().amax(dim=1, keepdim=True)


def test_gradient_is_captum_saliency_abs_max_over_channels(lenet, images):
    reference = channel_abs_max(Saliency(lenet).attribute(images, target=TARGETS, abs=True))
    assert_maps_close(Gradient(lenet)(images, TARGETS), reference)


@pytest.mark.parametrize(
    ("ours", "theirs"), [(Deconvolution, CaptumDeconvolution), (GuidedBackprop, CaptumGuidedBackprop)]
)
def test_rectifier_rules_match_captum(lenet, images, ours, theirs):
    reference = channel_abs_max(theirs(lenet).attribute(images, target=TARGETS))
    assert_maps_close(ours(lenet)(images, TARGETS), reference)


@pytest.mark.parametrize("layer", ["conv1", "conv2", "relu2", "pool1"])
def test_gradcam_is_captum_layer_gradcam_interpolated_bilinearly(lenet, images, layer):
    module = lenet.get_submodule(layer)
    cam = LayerGradCam(lenet, module).attribute(images, target=TARGETS, relu_attributions=True)
    reference = LayerAttribution.interpolate(cam, (32, 32), interpolate_mode="bilinear")
    assert_maps_close(GradCAM(lenet, layer=layer)(images, TARGETS), reference)


def test_gradcam_at_the_input_averages_the_input_gradient(lenet, images):
    x = images.clone().requires_grad_(True)
    lenet(x).gather(1, TARGETS.view(-1, 1)).sum().backward()
    reference = F.relu((x.grad.mean(dim=(2, 3), keepdim=True) * images).sum(dim=1, keepdim=True))
    assert_maps_close(GradCAM(lenet)(images, TARGETS), reference)


def test_guided_gradcam_matches_captum(lenet, images):
    attribution = GuidedGradCam(lenet, lenet.conv2).attribute(images, target=TARGETS, interpolate_mode="bilinear")
    assert_maps_close(GuidedGradCAM(lenet, "conv2")(images, TARGETS), channel_abs_max(attribution))


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
@pytest.mark.parametrize("to_input", [True, False])
def test_layer_gradient_x_activation_matches_captum(lenet, images, multiply_by_inputs, to_input):
    layers = ["conv2", "fc1"]
    captum = CaptumLayerGradientXActivation(
        lenet, [lenet.get_submodule(name) for name in layers], multiply_by_inputs=multiply_by_inputs
    ).attribute(images, target=TARGETS, attribute_to_layer_input=to_input)
    ours = LayerGradientXActivation(
        lenet, layers, multiply_by_inputs=multiply_by_inputs, attribute_to_layer_input=to_input
    )(images, TARGETS)
    assert len(ours) == len(captum) == 2
    for mine, theirs in zip(ours, captum, strict=True):
        assert_maps_close(mine, theirs)


def test_layer_gradient_x_activation_single_layer_has_the_layer_shape(lenet, images):
    attribution = LayerGradientXActivation(lenet, "conv1")(images, 3)
    reference = CaptumLayerGradientXActivation(lenet, lenet.conv1).attribute(images, target=3)
    assert attribution.shape == (4, 6, 28, 28)
    assert_maps_close(attribution, reference)


def test_input_x_gradient_is_captum_summed_over_channels(lenet, images):
    reference = CaptumInputXGradient(lenet).attribute(images, target=TARGETS).sum(dim=1, keepdim=True)
    assert_maps_close(InputXGradient(lenet)(images, TARGETS), reference)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_middle"])
def test_integrated_gradients_matches_captum(lenet, images, method):
    baseline = torch.full_like(images, 0.25)
    reference = (
        CaptumIntegratedGradients(lenet)
        .attribute(images, baselines=baseline, target=TARGETS, n_steps=20, method=method, internal_batch_size=7)
        .sum(dim=1, keepdim=True)
    )
    ours = IntegratedGradients(lenet, baseline=0.25, steps=20, method=method, internal_batch_size=7)(images, TARGETS)
    assert_maps_close(ours, reference)


def test_integrated_gradients_is_complete(lenet, images):
    """The map sums to f(x) - f(baseline) up to a quadrature error that shrinks with the steps.

    (The network is piecewise linear, so the error falls slowly: ~6% of the largest gap at
    16 steps, ~0.2% at 256.)
    """
    with torch.no_grad():
        gap = (lenet(images) - lenet(torch.zeros_like(images))).gather(1, TARGETS.view(-1, 1)).squeeze(1)
    errors = [
        float((IntegratedGradients(lenet, steps=steps)(images, TARGETS).sum(dim=(1, 2, 3)) - gap).abs().max())
        for steps in (16, 256)
    ]
    assert errors[1] < errors[0] / 4
    assert errors[1] < 0.01 * float(gap.abs().max())


def test_smoothgrad_matches_captum_noise_tunnel_with_the_same_noise(lenet, images):
    image = images[:1]
    sigma = 0.2 * float(image.max() - image.min())
    torch.manual_seed(5)
    captum = NoiseTunnel(Saliency(lenet)).attribute(image, nt_type="smoothgrad", nt_samples=12, stdevs=sigma, target=3)
    ours = SmoothGrad(lenet, noise_level=0.2, samples=12, seed=5)(image, 3)
    assert_maps_close(ours, channel_abs_max(captum))
