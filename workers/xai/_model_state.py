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
    # Only what differs from the wanted state is touched (and put back): a model that is already
    # in eval mode with frozen parameters, the usual case in a server, costs one traversal.
    training = [module for module in network.modules() if module.training]
    trainable = [param for param in network.parameters() if param.requires_grad]
    try:
        for module in training:
            module.training = False
        for param in trainable:
            param.requires_grad_(False)
        yield network
    finally:
        for module in training:
            module.training = True
        for param in trainable:
            param.requires_grad_(True)
