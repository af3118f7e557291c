"""SmoothGrad (Smilkov et al., 2017): the gradient magnitude averaged over noisy copies.

``saliency = max_c mean_s |d y_t / d x_c (x + e_s)|``, ``e_s ~ N(0, sigma^2)`` with
``sigma = noise_level * (max(x) - min(x))`` per image. The ``N * samples`` noisy inputs run in
chunks of ``internal_batch_size``. With a ``seed`` every image gets the same standard-normal draws
(scaled by its own sigma), so an image's map does not depend on the rest of the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._backprop import forward_logits, per_target_gradients
from ._base import Explainer
from ._validation import check_number, check_positive_int


class SmoothGrad(Explainer):
    """``SmoothGrad(network, *, noise_level=0.15, samples=25, seed=None)(inputs, targets) -> (N, 1 or l, H, W)``."""

    def __init__(
        self,
        network: nn.Module,
        *,
        noise_level: float = 0.15,
        samples: int = 25,
        seed: int | None = None,
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(network)
        self.noise_level = check_number(noise_level, "noise_level", low=0.0, high=10.0)
        self.samples = check_positive_int(samples, "samples")
        self.seed = None if seed is None else check_positive_int(seed, "seed", minimum=0)
        self.internal_batch_size = (
            None if internal_batch_size is None else check_positive_int(internal_batch_size, "internal_batch_size")
        )

    def explain(self, inputs: Tensor, targets: Tensor) -> Tensor:
        n, s = len(inputs), self.samples
        sigma = self.noise_level * (inputs.amax(dim=(1, 2, 3)) - inputs.amin(dim=(1, 2, 3)))
        # Row r is (image r // s, sample r % s): each image's samples are contiguous.
        image_of_row = torch.arange(n, device=inputs.device).repeat_interleave(s)
        shape = inputs.shape[1:]
        if self.seed is None:
            noise = torch.randn((n * s, *shape), device=inputs.device, dtype=inputs.dtype)
        else:
            generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
            draws = torch.randn((s, *shape), generator=generator, device=inputs.device, dtype=inputs.dtype)
            noise = draws.repeat(n, 1, 1, 1)
        noise *= sigma[image_of_row].view(-1, 1, 1, 1)
        chunk = self.internal_batch_size or n * s
        total = inputs.new_zeros((n, targets.shape[1], *inputs.shape[1:]))
        for start in range(0, n * s, chunk):
            images = image_of_row[start : start + chunk]
            noisy = (inputs[images] + noise[start : start + chunk]).requires_grad_(True)
            outputs = forward_logits(self.network, noisy, targets[images])
            for j, (gradient,) in enumerate(per_target_gradients(outputs, [noisy], targets[images])):
                total[:, j].index_add_(0, images, gradient.abs())
        return (total / s).amax(dim=2).contiguous()
