"""Gradient (Simonyan et al., 2014): the naive gradient of the target score w.r.t. the input.

``saliency[n] = max_c |d y_t / d x[n, c]|`` — the largest magnitude over channels.
"""

from __future__ import annotations

from torch import Tensor

from ._activation_rules import Rule
from ._backprop import abs_max, input_gradients
from ._base import Explainer


class Gradient(Explainer):
    """``Gradient(network)(inputs, targets) -> (N, 1 or l, H, W)``.

    Subclasses change only how rectifiers pass the gradient back (``rule``).
    """

    first_forward_is_the_inputs = True

    rule: Rule | None = None

    def explain(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return abs_max(input_gradients(self.network, inputs, targets, self.rule)).contiguous()
