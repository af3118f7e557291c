from __future__ import annotations

import pytest
import torch
from torch import nn

from models.lenet5 import LeNet5
from tests.nets import seeded


@pytest.fixture
def lenet() -> nn.Module:
    return seeded(LeNet5)


@pytest.fixture
def images() -> torch.Tensor:
    """(4, 3, 32, 32), deterministic."""
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def registry():
    from models.registry import ModelRegistry

    return ModelRegistry()


@pytest.fixture(scope="session")
def efficientnet(registry) -> nn.Module:
    return registry.network("efficientnet-lite0")


@pytest.fixture(scope="session")
def cat_photo():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())


@pytest.fixture(scope="session")
def cat_input(cat_photo, registry) -> torch.Tensor:
    from models.preprocessing import preprocess

    return torch.from_numpy(preprocess(cat_photo, registry.manifest("efficientnet-lite0").preprocessing))[None]
