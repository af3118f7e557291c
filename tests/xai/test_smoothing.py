"""TorchRay's Gaussian smoothing of a map (``smooth``), against SciPy's filter with the same kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from core.methods import call
from workers.methods import Context, build_explainer, explain
from workers.xai import smooth_maps


@pytest.mark.parametrize("smooth", [0.01, 0.05, 0.25])
def test_smoothing_is_a_gaussian_of_smooth_times_the_larger_side_with_edges_repeated(smooth):
    """SciPy's ``gaussian_filter`` with ``mode='nearest'`` (the border repeated) and TorchRay's kernel
    radius ``ceil(4 sigma)``: the same sums in float64, equal to 1e-12."""
    maps = torch.rand(2, 3, 24, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = smooth * 40
    wanted = np.stack(
        [
            [gaussian_filter(image.numpy(), sigma, mode="nearest", radius=math.ceil(4 * sigma)) for image in row]
            for row in maps
        ]
    )
    np.testing.assert_allclose(smooth_maps(maps, smooth).numpy(), wanted, rtol=0, atol=1e-12)


def test_no_smoothing_returns_the_maps_and_a_negative_amount_is_refused():
    maps = torch.rand(1, 1, 8, 8)
    assert smooth_maps(maps, 0.0) is maps
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        smooth_maps(maps, -0.1)


@pytest.mark.parametrize("method", ["gradient", "gradcam", "rise"])
def test_every_method_takes_smooth(lenet, images, method):
    context = Context(lenet, "conv2", seed=1)
    extra = {"num_masks": 64} if method == "rise" else {}
    plain, smoothed = call(method, **extra), call(method, smooth=0.05, **extra)
    targets = torch.tensor([[1]] * 4)
    wanted = smooth_maps(explain(plain, build_explainer(plain, context), images, targets, lambda f: None), 0.05)
    found = explain(smoothed, build_explainer(smoothed, context), images, targets, lambda f: None)
    torch.testing.assert_close(found, wanted)
