"""Class scores of networks that score every position: fully-convolutional and segmentation networks.

Such a network returns (N, C, h, w). :class:`SpatialScores` turns that into the (N, C) class scores
every explainer works with — attached as a forward hook, so the network keeps its layers and their
names — as TorchRay's saliency pipeline reads such outputs:

- by default, the sum over all positions (TorchRay's one-hot gradient spread over the spatial
  dimensions, ``get_backward_gradient``);
- ``box`` (``(x0, y0, x1, y1)`` in fractions of the width and height): the sum over the positions it
  covers, each weighted by the share of its cell inside the box — the gradient seed is that mask;
- ``pointing``: TorchRay's pointing gradient (``get_pointing_gradient``): the positions weighted by
  ``exp(y_c)`` normalised to sum to one (a softmax over the positions, within the region if one is
  given), the weights held constant as TorchRay's seed tensor is.

The perturbation methods read the same (N, C) scores, so every method explains the same quantity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class SpatialScores:
    """``SpatialScores(box=None, pointing=False).attach(network)``; ``box`` and ``pointing`` may be changed
    between calls (the network's owner serialises its calls)."""

    def __init__(self, box: tuple[float, float, float, float] | None = None, pointing: bool = False) -> None:
        self.box = box
        self.pointing = pointing

    def reduce(self, maps: Tensor) -> Tensor:
        """(N, C, h, w) -> (N, C)."""
        if maps.dim() != 4:
            raise ValueError(f"a network with spatial scores must return (N, C, h, w), got {tuple(maps.shape)}")
        weights = torch.ones_like(maps[:, :1])
        if self.box is not None:
            mask = box_mask(self.box, tuple(maps.shape[-2:]))  # type: ignore[arg-type]
            weights = mask.to(device=maps.device, dtype=maps.dtype).expand_as(weights)
        if self.pointing:
            detached = maps.detach()
            peak = detached.amax(dim=(2, 3), keepdim=True)  # exp of the differences: no overflow
            weights = weights * torch.exp(detached - peak)
            weights = weights / weights.sum(dim=(2, 3), keepdim=True)
        return (maps * weights).sum(dim=(2, 3))

    def _hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return self.reduce(output)

    def attach(self, network: nn.Module) -> RemovableHandle:
        return network.register_forward_hook(self._hook)


def box_mask(box: tuple[float, float, float, float], size: tuple[int, int]) -> Tensor:
    """An (h, w) mask of the box ``(x0, y0, x1, y1)`` (fractions of the width and height) over a grid of
    ``size`` cells: 1 inside, a border cell weighted by the share of it the box covers."""
    height, width = size
    x0, y0, x1, y1 = box

    def cover(low: float, high: float, count: int) -> Tensor:
        edges = torch.arange(count + 1, dtype=torch.float64) / count
        return (torch.minimum(edges[1:], torch.tensor(high)) - torch.maximum(edges[:-1], torch.tensor(low))).clamp(
            min=0
        ) * count

    return (cover(y0, y1, height)[:, None] * cover(x0, x1, width)[None, :]).float()
