"""Guided Backpropagation (Springenberg et al., 2015).

Rectifiers pass back the gradient only where their forward input was in the linear region and
the gradient is positive: ``g_in = max(g, 0) * [lower < x < upper]``. Applied to every rectifier
call the forward pass makes (see ``_activation_rules``); a network without one is refused.
"""

from __future__ import annotations

from ._activation_rules import Rule
from .gradient import Gradient


class GuidedBackprop(Gradient):
    """``GuidedBackprop(network)(inputs, targets) -> (N, 1 or l, H, W)``, abs-max over channels."""

    rule: Rule | None = "guided"
