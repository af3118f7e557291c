"""Put a network in the state an explanation needs, and give it back exactly as found."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def explaining(network: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of the block.

    Every module's ``training`` flag and every parameter's ``requires_grad`` are recorded and put
    back in ``finally``, so the caller's model is unchanged after the call, also when it raises.
    Freezing the parameters spares autograd the weight gradients nobody asked for.
    """
    modes = [(module, module.training) for module in network.modules()]
    grads = [(param, param.requires_grad) for param in network.parameters()]
    try:
        network.eval()
        for param, _ in grads:
            param.requires_grad_(False)
        yield network
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)
