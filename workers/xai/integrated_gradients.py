"""Integrated Gradients (Sundararajan et al., 2017).

``IG_c(x) = (x_c - b_c) * integral_0^1 d y_t / d x_c (b + a (x - b)) da``, the integral by
Gauss-Legendre quadrature (default) or a Riemann rule over ``steps`` points; summed over channels
so the map keeps IG's completeness (the map sums to ``y_t(x) - y_t(b)`` up to the quadrature
error). The ``N * steps`` scaled inputs run in chunks of ``internal_batch_size``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ._backprop import forward_logits, per_target_gradients
from ._base import Explainer
from ._validation import check_positive_int

METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(method: str, steps: int) -> tuple[Tensor, Tensor]:
    """Points ``alpha`` in [0, 1] and weights that sum to 1, as float64 tensors of length steps."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    start, stop = {
        "riemann_left": (0.0, 1 - 1 / steps),
        "riemann_right": (1 / steps, 1.0),
        "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)),
    }[method]
    return torch.linspace(start, stop, steps, dtype=torch.float64), weights


class IntegratedGradients(Explainer):
    """``IntegratedGradients(network, *, baseline=0.0, steps=50, ...)(inputs, targets) -> (N, 1 or l, H, W)``.

    ``baseline``: a number, or a tensor broadcastable to the inputs ((C, H, W) or (N, C, H, W)).
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        baseline: float | Tensor = 0.0,
        steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(network)
        if isinstance(baseline, bool) or not isinstance(baseline, int | float | Tensor):
            raise TypeError(f"baseline must be a number or a tensor, got {type(baseline).__name__}")
        if isinstance(baseline, float | int) and not math.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {baseline}")
        self.baseline = baseline
        self.steps = check_positive_int(steps, "steps", minimum=2 if method.startswith("riemann") else 1)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.internal_batch_size = (
            None if internal_batch_size is None else check_positive_int(internal_batch_size, "internal_batch_size")
        )

    def explain(self, inputs: Tensor, targets: Tensor) -> Tensor:
        n = len(inputs)
        baseline = self._baseline_for(inputs)
        alphas, weights = (t.to(inputs.device, inputs.dtype) for t in quadrature(self.method, self.steps))
        # Row r of the scaled batch is (step r // n, image r % n), the order Captum uses too.
        image_of_row = torch.arange(n, device=inputs.device).repeat(self.steps)
        step_of_row = torch.arange(self.steps, device=inputs.device).repeat_interleave(n)
        chunk = self.internal_batch_size or n * self.steps
        total = inputs.new_zeros((n, targets.shape[1], *inputs.shape[1:]))
        delta = inputs - baseline
        for start in range(0, n * self.steps, chunk):
            images = image_of_row[start : start + chunk]
            steps = step_of_row[start : start + chunk]
            scaled = (baseline[images] + alphas[steps].view(-1, 1, 1, 1) * delta[images]).requires_grad_(True)
            outputs = forward_logits(self.network, scaled, targets[images])
            for j, (gradient,) in enumerate(per_target_gradients(outputs, [scaled], targets[images])):
                total[:, j].index_add_(0, images, gradient * weights[steps].view(-1, 1, 1, 1))
        return (total * delta.unsqueeze(1)).sum(dim=2).contiguous()

    def _baseline_for(self, inputs: Tensor) -> Tensor:
        if not isinstance(self.baseline, Tensor):
            return torch.full_like(inputs, float(self.baseline))
        try:
            return self.baseline.to(inputs.device, inputs.dtype).expand_as(inputs)
        except RuntimeError:
            raise ValueError(
                f"baseline of shape {tuple(self.baseline.shape)} does not broadcast to inputs {tuple(inputs.shape)}"
            ) from None
