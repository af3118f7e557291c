"""One forward pass, then one backward pass per target column: the gradient machinery."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from ._activation_rules import RectifierTape, Rule
from ._validation import check_targets_in_range


def forward_logits(network: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Run the network and check that its output is (N, num_classes) and covers ``targets``."""
    outputs = network(inputs)
    if not isinstance(outputs, Tensor) or outputs.dim() != 2 or outputs.shape[0] != inputs.shape[0]:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ValueError(f"network must return an (N, num_classes) tensor of scores, got {shape}")
    check_targets_in_range(targets, outputs.shape[1])
    return outputs


def one_hot_seed(outputs: Tensor, column: Tensor) -> Tensor:
    """The gradient that selects ``outputs[n, column[n]]`` for every n."""
    return torch.zeros_like(outputs).scatter_(1, column.reshape(-1, 1), 1.0)


def per_target_gradients(
    outputs: Tensor, wrt: Sequence[Tensor], targets: Tensor, *, keep_graph: bool = False
) -> Iterator[tuple[Tensor, ...]]:
    """Gradients of each target column's score w.r.t. ``wrt``: one backward pass per column.

    The forward graph is kept between columns (``retain_graph``), so l targets cost one forward
    and l backward passes. Each backward only reaches as far down the graph as ``wrt`` needs.
    """
    last = targets.shape[1] - 1
    if not outputs.requires_grad:  # nothing differentiable reaches the output: all gradients are 0
        for _ in range(targets.shape[1]):
            yield tuple(torch.zeros_like(tensor) for tensor in wrt)
        return
    for j in range(targets.shape[1]):
        yield torch.autograd.grad(
            outputs,
            list(wrt),
            grad_outputs=one_hot_seed(outputs, targets[:, j]),
            retain_graph=keep_graph or j < last,
            materialize_grads=True,
        )


def recorded_forward(
    network: nn.Module, inputs: Tensor, targets: Tensor, rule: Rule | None
) -> tuple[Tensor, RectifierTape | None]:
    """Forward pass; with a ``rule``, under a :class:`RectifierTape` that must catch a rectifier."""
    with ExitStack() as stack:
        tape = stack.enter_context(RectifierTape(rule)) if rule is not None else None
        outputs = forward_logits(network, inputs, targets)
    if tape is not None and tape.calls == 0:
        raise ValueError(
            f"the {rule!r} rule found no ReLU, ReLU6 or Hardtanh in the network's forward pass; "
            "it would silently equal the plain gradient"
        )
    return outputs, tape


def input_gradients(network: nn.Module, inputs: Tensor, targets: Tensor, rule: Rule | None = None) -> Tensor:
    """inputs: (N, C, H, W); targets: (N, L). Returns d score / d input as (N, L, C, H, W)."""
    x = inputs.requires_grad_(True)
    outputs, _ = recorded_forward(network, x, targets, rule)
    return torch.stack([grads[0] for grads in per_target_gradients(outputs, [x], targets)], dim=1)


def abs_max(gradients: Tensor) -> Tensor:
    """(N, L, C, H, W) -> (N, L, H, W): the largest magnitude over channels."""
    return gradients.abs().amax(dim=2)
