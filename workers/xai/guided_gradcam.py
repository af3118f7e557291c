"""Guided GradCAM (Selvaraju et al., 2017): Guided Backpropagation x upsampled GradCAM.

``saliency = max_c |gbp_c * upsample(cam)|``. One forward pass serves both factors: the
rectifiers are recorded with switchable rules, the CAM's gradient is taken under the plain rule
(from the output down to the layer only) and the input gradient under the guided rule.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._activation_rules import RectifierTape
from ._backprop import per_target_gradients
from ._base import Explainer
from ._layers import resolve_layer
from .gradcam import layer_cams, upsample


class GuidedGradCAM(Explainer):
    """``GuidedGradCAM(network, layer)(inputs, targets) -> (N, 1 or l, H, W)``."""

    first_forward_is_the_inputs = True

    def __init__(self, network: nn.Module, layer: str | nn.Module) -> None:
        super().__init__(network)
        self.layer = resolve_layer(self.network, layer)[0]

    def explain(self, inputs: Tensor, targets: Tensor) -> Tensor:
        x = inputs.requires_grad_(True)
        with RectifierTape("plain") as tape:
            cams, outputs = layer_cams(self.network, self.layer, x, targets, keep_graph=True)
        if tape.calls == 0:
            raise ValueError("GuidedGradCAM found no ReLU, ReLU6 or Hardtanh in the network's forward pass")
        tape.rule = "guided"
        guided = torch.stack([g for (g,) in per_target_gradients(outputs, [x], targets)], dim=1)
        cams = upsample(cams, inputs.shape[-2:]).unsqueeze(2)
        return (guided * cams).abs().amax(dim=2).contiguous()
