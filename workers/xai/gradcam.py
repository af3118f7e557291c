"""GradCAM (Selvaraju et al., 2017) at a layer given by its dotted module name.

``alpha_k = mean_ij d y_t / d A_k[i, j]``; ``cam = ReLU(sum_k alpha_k A_k)``, upsampled bilinearly
(``align_corners=False``) to the input's size. ``layer=''`` takes the input itself as ``A``.
Each target costs a backward pass from the output down to the layer only.

A vision transformer's token layer, (N, T, C), is read as its patch grid (``_tokens.py``): the
activation and its gradient are both reshaped to (N, C, h, w), the class and register tokens dropped
— what pytorch-grad-cam's ``reshape_transform`` does by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._backprop import forward_logits, per_target_gradients
from ._base import Explainer
from ._layers import LayerCapture, capturing, resolve_layer
from ._tokens import is_token_layer, tokens_to_grid


class GradCAM(Explainer):
    """``GradCAM(network, layer='')(inputs, targets) -> (N, 1 or l, H, W)``."""

    first_forward_is_the_inputs = True

    def __init__(self, network: nn.Module, layer: str | nn.Module = "") -> None:
        super().__init__(network)
        self.layer = "" if layer == "" else resolve_layer(self.network, layer)[0]

    def explain(self, inputs: Tensor, targets: Tensor) -> Tensor:
        cams, _ = layer_cams(self.network, self.layer, inputs, targets)
        return upsample(cams, inputs.shape[-2:])


def layer_cams(
    network: nn.Module, layer: str, inputs: Tensor, targets: Tensor, *, keep_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """One forward pass; per target, the CAM at ``layer`` as (N, L, h, w), and the outputs.

    Unless ``inputs`` require grad (or ``layer`` is the input), autograd records only the part of
    the network above the layer. With ``keep_graph`` a caller may go on backpropagating from the
    returned outputs.
    """
    x = inputs.requires_grad_(True) if layer == "" else inputs
    if layer == "":
        outputs = forward_logits(network, x, targets)
        activation = x
    else:
        capture = LayerCapture(*resolve_layer(network, layer))
        with capturing([capture]):
            outputs = forward_logits(network, x, targets)
        activation = capture.activation()
    size = tuple(inputs.shape[-2:])
    if not (activation.dim() == 4 or is_token_layer(tuple(activation.shape), size)):
        raise ValueError(
            f"layer {layer!r} must produce a 4-D (N, K, h, w) activation, or (N, T, C) tokens of a patch grid, "
            f"for GradCAM; got shape {tuple(activation.shape)}"
        )
    as_map = (lambda tensor: tensor) if activation.dim() == 4 else (lambda tensor: tokens_to_grid(tensor, size))
    cams = []
    for (gradient,) in per_target_gradients(outputs, [activation], targets, keep_graph=keep_graph):
        weights = as_map(gradient).mean(dim=(2, 3), keepdim=True)
        cams.append((weights * as_map(activation.detach())).sum(dim=1))
    return torch.relu(torch.stack(cams, dim=1)), outputs


def upsample(maps: Tensor, size: torch.Size) -> Tensor:
    """(N, L, h, w) -> (N, L, H, W), bilinear."""
    if maps.shape[-2:] == size:
        return maps.contiguous()
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False).contiguous()
