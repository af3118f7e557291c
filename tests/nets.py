"""Small seeded networks that exercise what real models do to hook-based explainers."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.lenet5 import LeNet5


class ReusedReLULeNet5(LeNet5):
    """The seeds' own LeNet5: one ``self.relu`` module called four times per forward pass."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu(self.conv1(x)))
        x = self.pool2(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(x.flatten(1)))
        return self.fc3(self.relu(self.fc2(x)))


Activation = Callable[[Tensor, float], Tensor]


def default_activation(x: Tensor, upper: float) -> Tensor:
    return F.hardtanh(x, 0.0, upper) if upper != float("inf") else F.relu(x)


class FunctionalNet(nn.Module):
    """Conv + eval-mode BatchNorm + the functional, in-place and clamped rectifier forms.

    ``activation(x, upper)`` replaces every rectifier when given, so a test can build the same
    network with hand-written reference rules.
    """

    def __init__(self, num_classes: int = 10, activation: Activation | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu6 = nn.ReLU6()
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, num_classes)
        self.activation = activation

    def _act(self, x: Tensor, upper: float, native: Callable[[Tensor], Tensor]) -> Tensor:
        return self.activation(x, upper) if self.activation is not None else native(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self._act(self.bn1(self.conv1(x)), float("inf"), lambda t: F.relu(t, inplace=True))
        x = self._act(self.conv2(x), 6.0, self.relu6)  # the ReLU6 module, first call
        x = self._act(x * 2.0, 6.0, self.relu6)  # ... and its second call
        x = F.max_pool2d(x, 2)
        x = self._act(self.conv3(x), float("inf"), torch.relu)
        return self.fc(self._act(x.flatten(1), float("inf"), lambda t: t.relu()))


class InPlaceNet(nn.Module):
    """Rectifiers whose return value is ignored: only the in-place update carries the result."""

    def __init__(self, num_classes: int = 10, activation: Activation | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16 * 16, num_classes)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if self.activation is None:
            torch.relu_(h)
        else:
            h = self.activation(h, float("inf"))
        h = F.max_pool2d(h, 2).flatten(1)
        if self.activation is None:
            h.relu_()
        else:
            h = self.activation(h, float("inf"))
        return self.fc(h)


class SmoothNet(nn.Module):
    """No rectifier at all (Tanh, SiLU): rule-based methods must refuse it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.SiLU()
        self.fc = nn.Linear(4 * 32 * 32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.tanh(self.act(self.conv(x))).flatten(1))


class TwiceNet(nn.Module):
    """A convolution run twice per forward pass: its activation is ambiguous for layer methods."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu(self.conv(self.relu(self.conv(x)))).flatten(1))


def seeded(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """A network with deterministic random weights (BatchNorm statistics randomised too)."""
    torch.manual_seed(seed)
    network = factory()
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return network.eval()


def TinyViT() -> nn.Module:
    """A two-block ViT for 3x32x32 inputs (64 patch tokens and a class token), fused attention."""
    from models.vit import ViT

    return ViT(num_classes=10, dim=16, depth=2, heads=2)
