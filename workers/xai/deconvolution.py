"""Deconvolution (Zeiler & Fergus, 2014): rectifiers pass back only positive gradients.

Every ReLU/ReLU6/Hardtanh call of the forward pass — modules, functional and in-place forms, a
module called several times — backpropagates ``max(g, 0)`` regardless of its forward input (an
upper clamp still stops it). A network with no such activation is refused: the result would be
the plain gradient.
"""

from __future__ import annotations

from ._activation_rules import Rule
from .gradient import Gradient


class Deconvolution(Gradient):
    """``Deconvolution(network)(inputs, targets) -> (N, 1 or l, H, W)``, abs-max over channels."""

    rule: Rule | None = "deconv"
