"""Gaussian smoothing of maps, as TorchRay's ``saliency(..., smooth=s)`` does it.

The standard deviation is ``smooth * max(H, W)`` pixels; the kernel spans ``ceil(4 sigma)`` pixels on
each side, normalised to sum to one, applied separably (columns, then rows) with the border pixels
repeated (``replicate`` padding), so a map's edges are not darkened.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    width = math.ceil(4 * sigma)
    offsets = torch.arange(-width, width + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def smooth_maps(maps: Tensor, smooth: float) -> Tensor:
    """(N, L, H, W) maps blurred by a Gaussian of ``smooth * max(H, W)`` pixels; ``smooth=0`` returns them."""
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    if smooth == 0:
        return maps
    sigma = smooth * max(maps.shape[-2:])
    kernel = gaussian_kernel(sigma, maps.dtype, maps.device)
    width = len(kernel) // 2
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    flat = F.conv2d(F.pad(flat, (0, 0, width, width), mode="replicate"), kernel.reshape(1, 1, -1, 1))
    flat = F.conv2d(F.pad(flat, (width, width, 0, 0), mode="replicate"), kernel.reshape(1, 1, 1, -1))
    return flat.reshape(maps.shape)
