"""Class scores of networks that score every position: fully-convolutional and segmentation networks.

Such a network returns (N, C, h, w). :class:`SpatialScores` turns that into the (N, C) class scores
every explainer works with — attached as a forward hook, so the network keeps its layers and their
names — as TorchRay's saliency pipeline reads such outputs:

- by default, the sum over all positions (TorchRay's one-hot gradient spread over the spatial
  dimensions, ``get_backward_gradient``);
- ``box`` (``(x0, y0, x1, y1)`` in fractions of the width and height): the sum over the positions it
  covers, each weighted by the share of its cell inside the box — the gradient seed is that mask;
- ``mask`` (an (H, W) tensor of weights at any resolution, laid over the output): each position weighted
  by the mask's mean over its cell — TorchRay's ``get_backward_gradient`` with a seed tensor, for the
  target's channel;
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

    def __init__(
        self,
        box: tuple[float, float, float, float] | None = None,
        mask: Tensor | None = None,
        pointing: bool = False,
    ) -> None:
        self.box = box
        self.mask = mask
        self.pointing = pointing

    def reduce(self, maps: Tensor) -> Tensor:
        """(N, C, h, w) -> (N, C)."""
        if maps.dim() != 4:
            raise ValueError(f"a network with spatial scores must return (N, C, h, w), got {tuple(maps.shape)}")
        weights = torch.ones_like(maps[:, :1])
        if self.box is not None or self.mask is not None:
            size = tuple(maps.shape[-2:])
            cells = box_mask(self.box, size) if self.box is not None else cell_average(self.mask, size)  # type: ignore
            weights = cells.to(device=maps.device, dtype=maps.dtype).expand_as(weights)
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


def _shares(lows: Tensor, highs: Tensor, cells: int) -> Tensor:
    """(cells, K): the share of cell i (of ``cells`` equal cells spanning [0, 1]) that interval k,
    [lows[k], highs[k]], covers."""
    edges = torch.arange(cells + 1, dtype=torch.float64) / cells
    low = torch.maximum(edges[:-1, None], lows.double()[None, :])
    high = torch.minimum(edges[1:, None], highs.double()[None, :])
    return (high - low).clamp(min=0) * cells


def box_mask(box: tuple[float, float, float, float], size: tuple[int, int]) -> Tensor:
    """An (h, w) mask of the box ``(x0, y0, x1, y1)`` (fractions of the width and height) over a grid of
    ``size`` cells: 1 inside, a border cell weighted by the share of it the box covers."""
    x0, y0, x1, y1 = (torch.tensor([bound]) for bound in box)
    return (_shares(y0, y1, size[0]) @ _shares(x0, x1, size[1]).T).float()


def _pixel_shares(pixels: int, cells: int) -> Tensor:
    """(cells, pixels): the share of each cell each of ``pixels`` equal pixels spanning [0, 1] covers."""
    edges = torch.arange(pixels + 1, dtype=torch.float64) / pixels
    return _shares(edges[:-1], edges[1:], cells)


def cell_average(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """An (H, W) mask averaged over each cell of an (h, w) grid laid over it, by exact areas (a pixel split
    between two cells counts in each by its share)."""
    height, width = mask.shape[-2:]
    rows, columns = _pixel_shares(height, size[0]), _pixel_shares(width, size[1])
    return (rows @ mask.reshape(height, width).double().cpu() @ columns.T).float()
