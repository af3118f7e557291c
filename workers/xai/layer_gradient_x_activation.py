"""Layer Gradient x Activation: ``attribution = A * d y_t / d A`` at one or several layers.

``A`` is the layer's output, or its input with ``attribute_to_layer_input=True``; with
``multiply_by_inputs=False`` the attribution is the gradient alone. The result has the layer's
shape, (N, *layer_shape), or (N, l, *layer_shape) for (N, l) targets; a list of layers gives a
list of results in the same order. A layer that runs more than once in the forward pass is
refused (which call's activation would be meant?).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._backprop import forward_logits, per_target_gradients
from ._base import Explainer
from ._layers import LayerCapture, capturing, resolve_layer

LayerSpec = str | nn.Module


class LayerGradientXActivation(Explainer):
    """``LayerGradientXActivation(network, layer)(inputs, targets)``."""

    first_forward_is_the_inputs = True

    def __init__(
        self,
        network: nn.Module,
        layer: LayerSpec | Sequence[LayerSpec],
        *,
        multiply_by_inputs: bool = True,
        attribute_to_layer_input: bool = False,
    ) -> None:
        super().__init__(network)
        self.single = isinstance(layer, str | nn.Module)
        layers = [layer] if self.single else list(layer)  # type: ignore[list-item]
        if not layers:
            raise ValueError("layer must name at least one layer")
        self.layers = [resolve_layer(self.network, item) for item in layers]
        for name, value in (
            ("multiply_by_inputs", multiply_by_inputs),
            ("attribute_to_layer_input", attribute_to_layer_input),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        self.multiply_by_inputs = multiply_by_inputs
        self.attribute_to_layer_input = attribute_to_layer_input

    def __call__(self, inputs: Tensor, targets: Any) -> Tensor | list[Tensor]:
        results = super().__call__(inputs, targets)
        if not (isinstance(targets, Tensor) and targets.dim() == 2):
            results = [result.squeeze(1) for result in results]
        return results[0] if self.single else results

    def explain(self, inputs: Tensor, targets: Tensor) -> list[Tensor]:
        """Returns one (N, L, *layer_shape) tensor per layer."""
        captures = [
            LayerCapture(name, module, capture_input=self.attribute_to_layer_input) for name, module in self.layers
        ]
        with capturing(captures):
            outputs = forward_logits(self.network, inputs, targets)
        activations = [capture.activation() for capture in captures]
        per_target = list(per_target_gradients(outputs, activations, targets))
        results = []
        for i, activation in enumerate(activations):
            grads = torch.stack([grads[i] for grads in per_target], dim=1)
            result = grads * activation.detach().unsqueeze(1) if self.multiply_by_inputs else grads
            results.append(result)
        return results
