"""Every explainer on the real ImageNet model (EfficientNet-Lite0) and a real photo of a cat."""

from __future__ import annotations

import pytest
import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import Saliency

from models.registry import ModelRegistry
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

EGYPTIAN_CAT = 285
LAYER = ModelRegistry().manifest("efficientnet-lite0").gradcam_layer
# In the 451x300 photo: the face (eyes, nose, mouth) and where the background starts on the right.
FACE_BOX = (100, 60, 360, 280)  # x0, y0, x1, y1
BACKGROUND_X = 370


def to_map_coords(x: int, y: int) -> tuple[int, int]:
    return round(x * 224 / 451), round(y * 224 / 300)


def test_the_cat_is_classified_as_a_cat(efficientnet, cat_input):
    with torch.no_grad():
        top5 = efficientnet(cat_input).topk(5).indices[0].tolist()
    assert top5[0] == EGYPTIAN_CAT


EXPLAINERS = {
    "gradient": lambda net: Gradient(net),
    "deconvolution": lambda net: Deconvolution(net),
    "guided_backprop": lambda net: GuidedBackprop(net),
    "input_x_gradient": lambda net: InputXGradient(net),
    "integrated_gradients": lambda net: IntegratedGradients(net, steps=4),
    "smoothgrad": lambda net: SmoothGrad(net, samples=3, seed=0),
    "gradcam": lambda net: GradCAM(net, LAYER),
    "guided_gradcam": lambda net: GuidedGradCAM(net, LAYER),
}


@pytest.mark.parametrize("name", EXPLAINERS)
def test_every_method_runs_on_the_photo_for_two_targets(efficientnet, cat_input, name):
    maps = EXPLAINERS[name](efficientnet)(cat_input, torch.tensor([[EGYPTIAN_CAT, 281]]))
    assert maps.shape == (1, 2, 224, 224)
    assert bool(torch.isfinite(maps).all())
    assert float(maps.abs().amax()) > 0
    assert not torch.allclose(maps[0, 0], maps[0, 1]), "two classes gave the same map"


def test_layer_gradient_x_activation_has_the_blocks_shape(efficientnet, cat_input):
    attribution = LayerGradientXActivation(efficientnet, LAYER)(cat_input, EGYPTIAN_CAT)
    assert attribution.shape == (1, 320, 7, 7)


def test_gradcam_mass_is_on_the_cat(efficientnet, cat_input):
    """Measured: the CAM's maximum is on the face (pointing game), its mass per unit area inside
    the face box is above the photo's average (energy ratio 1.26), and 88% of its mass lies left
    of where the background starts (82% of the area)."""
    cam = GradCAM(efficientnet, LAYER)(cat_input, EGYPTIAN_CAT)[0, 0]
    x0, y0 = to_map_coords(*FACE_BOX[:2])
    x1, y1 = to_map_coords(*FACE_BOX[2:])
    row, col = divmod(int(cam.argmax()), cam.shape[1])
    assert y0 <= row < y1 and x0 <= col < x1
    face_share = float(cam[y0:y1, x0:x1].sum() / cam.sum())
    face_area = (y1 - y0) * (x1 - x0) / cam.numel()
    assert face_share / face_area > 1.2
    edge = to_map_coords(BACKGROUND_X, 0)[0]
    assert float(cam[:, :edge].sum() / cam.sum()) > 0.85


def test_guided_backprop_reaches_the_relu6_of_every_block(efficientnet, cat_input):
    """Captum's GuidedBackprop hooks only nn.ReLU, so on EfficientNet-Lite0 it is the plain gradient."""
    captum = CaptumGuidedBackprop(efficientnet).attribute(cat_input, target=EGYPTIAN_CAT).abs().amax(1, keepdim=True)
    plain = Saliency(efficientnet).attribute(cat_input, target=EGYPTIAN_CAT).amax(1, keepdim=True)
    torch.testing.assert_close(captum, plain)
    ours = GuidedBackprop(efficientnet)(cat_input, EGYPTIAN_CAT)
    assert float((ours - plain).abs().max()) > 0.5 * float(plain.max())


@pytest.mark.parametrize("layer", ["_swish", "_blocks.3._swish"])
def test_a_layer_called_twice_is_refused(efficientnet, cat_input, layer):
    with pytest.raises(ValueError, match="ran 2 times"):
        GradCAM(efficientnet, layer)(cat_input, EGYPTIAN_CAT)


def test_channels_last_inputs_give_the_same_maps(efficientnet, cat_input):
    channels_last = cat_input.contiguous(memory_format=torch.channels_last)
    for make in (lambda net: GuidedBackprop(net), lambda net: GradCAM(net, LAYER)):
        reference = make(efficientnet)(cat_input, EGYPTIAN_CAT)
        torch.testing.assert_close(
            make(efficientnet)(channels_last, EGYPTIAN_CAT), reference, rtol=1e-4, atol=1e-4 * float(reference.max())
        )


def test_a_photo_gets_the_same_map_alone_and_in_a_batch(efficientnet, cat_input):
    batch = torch.cat([cat_input, cat_input.flip(-1), torch.zeros_like(cat_input)])
    for make in (lambda net: GuidedBackprop(net), lambda net: GradCAM(net, LAYER)):
        together = make(efficientnet)(batch, EGYPTIAN_CAT)
        alone = make(efficientnet)(cat_input, EGYPTIAN_CAT)
        torch.testing.assert_close(alone, together[:1], rtol=1e-5, atol=1e-5 * float(alone.max()))


def test_the_served_network_pads_in_its_convolutions_and_computes_what_the_package_does(efficientnet, cat_input):
    """The stride-1 convolutions pad by themselves (no copy of the activation before each); the stride-2
    ones keep the package's padding, one more at the end. Same maps: 1e-5 of the largest value covers
    convolution kernels that may add in another order once the padding is theirs."""
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    package = EfficientNet.from_name("efficientnet-lite0").eval()
    package.load_state_dict(efficientnet.state_dict())
    convolutions = [m for m in efficientnet.modules() if isinstance(m, Conv2dStaticSamePadding)]
    assert any(m.padding != (0, 0) and isinstance(m.static_padding, torch.nn.Identity) for m in convolutions)
    kept = [m for m in convolutions if m.padding == (0, 0)]
    assert all(m.stride != (1, 1) or m.kernel_size == (1, 1) for m in kept)
    with torch.inference_mode():
        expected, found = package(cat_input), efficientnet(cat_input)
    assert torch.allclose(found, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    target = expected.argmax(dim=1, keepdim=True)
    ours, theirs = (GradCAM(net, LAYER)(cat_input, target) for net in (efficientnet, package))
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))
