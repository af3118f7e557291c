"""Input x Gradient (Shrikumar et al., 2016): ``saliency = sum_c x_c * d y_t / d x_c``.

Signed; summed over channels so the map keeps the first-order contribution of each pixel.
"""

from __future__ import annotations

from torch import Tensor

from ._backprop import input_gradients
from ._base import Explainer


class InputXGradient(Explainer):
    """``InputXGradient(network)(inputs, targets) -> (N, 1 or l, H, W)``."""

    first_forward_is_the_inputs = True

    def explain(self, inputs: Tensor, targets: Tensor) -> Tensor:
        gradients = input_gradients(self.network, inputs, targets)
        return (gradients * inputs.detach().unsqueeze(1)).sum(dim=2).contiguous()
