"""The explainer contract, shared by every method.

An explainer is built from the network (plus the method's own keyword-only knobs) and called as
``explainer(inputs, targets)``: ``inputs`` (N, C, H, W); ``targets`` an int, a 0-D tensor, a 1-D
tensor or list of N ints, or an (N, l) tensor. Input-space methods return (N, 1, H, W), or
(N, l, H, W) for (N, l) targets. Bad arguments raise ``TypeError``/``ValueError`` naming the
argument. The network is put in eval mode with frozen parameters for the call and given back as
found (see :func:`explaining`); it is never copied.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ._model_state import explaining
from ._top_targets import TopTargets, top_targets
from ._validation import check_inputs, check_network, normalise_targets


class Explainer:
    """Base class: argument checks and model state around :meth:`explain`."""

    # The first forward pass of :meth:`explain` is over the inputs themselves: TopTargets come from it.
    first_forward_is_the_inputs = False

    def __init__(self, network: nn.Module) -> None:
        self.network = check_network(network)
        self.last_outputs: Tensor | None = None  # the network's output on the inputs of a TopTargets call

    def __call__(self, inputs: Tensor, targets: Any) -> Any:
        inputs = check_inputs(inputs)
        _check_device(self.network, inputs)
        if not isinstance(targets, TopTargets):
            rows = normalise_targets(targets, len(inputs), inputs.device)
            with explaining(self.network):
                return self.explain(inputs.detach(), rows)
        with explaining(self.network):
            first = self.first_forward_is_the_inputs
            with top_targets(self.network, inputs.detach(), targets.k, from_first_forward=first) as (rows, outputs):
                result = self.explain(inputs.detach(), rows)
        self.last_outputs = outputs[0]
        return result

    def explain(self, inputs: Tensor, targets: Tensor) -> Any:
        """inputs: (N, C, H, W), detached; targets: (N, L) long. Returns the method's result."""
        raise NotImplementedError


def _check_device(network: nn.Module, inputs: Tensor) -> None:
    param = next(network.parameters(), None)
    if param is not None and param.device != inputs.device:
        raise ValueError(f"inputs are on {inputs.device} but the network is on {param.device}")
