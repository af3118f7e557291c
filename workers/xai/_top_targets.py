"""Targets chosen from the network's own output: the k most probable classes of each image.

``explainer(inputs, TopTargets(k))`` explains, per image, its k highest-scoring classes, and leaves
the network's output on ``inputs`` in ``explainer.last_outputs`` (N, num_classes). A method whose
first forward pass is over ``inputs`` themselves (the gradient methods, GradCAM and the layer
methods) takes both from that pass — one forward serves the prediction and the explanation; the
others (Integrated Gradients, SmoothGrad, the perturbation methods) run one forward pass more.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._validation import check_positive_int


@dataclass(frozen=True)
class TopTargets:
    k: int

    def __post_init__(self) -> None:
        check_positive_int(self.k, "TopTargets.k")


@contextmanager
def top_targets(
    network: nn.Module, inputs: Tensor, k: int, *, from_first_forward: bool
) -> Iterator[tuple[Tensor, list[Tensor]]]:
    """(targets (N, k), [the network's detached output once known]).

    With ``from_first_forward`` the targets are filled in by the network's first forward pass inside
    the block (a forward hook, removed at its end); otherwise one forward pass runs first, here.
    """
    outputs: list[Tensor] = []

    def resolve(output: object) -> None:
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != len(inputs):
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"network must return an (N, num_classes) tensor of scores, got {shape}")
        if k > output.shape[1]:
            raise ValueError(f"TopTargets.k must be <= the number of classes ({output.shape[1]}), got {k}")
        outputs.append(output.detach())
        targets.copy_(output.detach().topk(k, dim=1).indices)

    targets = torch.zeros((len(inputs), k), dtype=torch.long, device=inputs.device)
    if not from_first_forward:
        with torch.no_grad():
            resolve(network(inputs))
        yield targets, outputs
        return

    def first_forward(module: nn.Module, args: tuple, output: object) -> None:
        if not outputs:
            resolve(output)

    handle = network.register_forward_hook(first_forward)
    try:
        yield targets, outputs
    finally:
        handle.remove()
    if not outputs:
        raise RuntimeError("the network never ran forward, so TopTargets could not be chosen")
