"""LeNet5 for 3x32x32 inputs, as in the seeds' examples.

conv 6 k5 -> ReLU -> maxpool -> conv 16 k5 -> ReLU -> maxpool -> fc 120 -> ReLU -> fc 84 -> ReLU
-> fc num_classes. Each ReLU is its own module. ``num_features`` (84) and ``output_features``
are the attributes an OoD head needs: with ``output_features`` set, the network returns its 84
features instead of the class scores, and ``classify_features`` turns features into scores, so a
caller that needs both computes the backbone once.
"""

from __future__ import annotations

from torch import Tensor, nn


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_features = 84
        self.output_features = False
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, self.num_features)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(self.num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu4(self.fc2(self.relu3(self.fc1(x.flatten(1)))))
        if self.output_features:
            return x
        return self.classify_features(x)

    def classify_features(self, features: Tensor) -> Tensor:
        """(N, 84) features -> (N, num_classes) scores."""
        return self.fc3(features)
