"""RISE (Petsiuk et al., 2018): randomized input sampling for explanation of black-box models.

``S_c = 1 / (K · p) · sum_k f_c(I ⊙ M_k) · M_k`` over K random masks. Mask k: a cells x cells grid of
Bernoulli(p) cells, upsampled bilinearly to ``((cells + 1) · ⌈H / cells⌉, (cells + 1) · ⌈W / cells⌉)``
and cropped to H x W at a random shift of less than one cell (the paper's scheme). Only the grids and
shifts are stored; a batch of masks is expanded when needed, with the separable form of bilinear
upsampling: ``M_k = A_h[shift_k : shift_k + H] @ grid_k @ A_w[...]^T``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._perturbation import ActivationFn, Masks, PerturbationExplainer, Progress, Weigh
from ._validation import check_number, check_positive_int

MAX_MASKS = 100_000
CONVERGENCE_BLOCK = 250  # masks between two looks at the running map, with a tolerance
CONVERGENCE_MIN = 500  # masks an image gets at least before it may stop


class MaskSet:
    """K masks of one size as their (K, cells, cells) grids and (K,) shifts; ``masks(index) -> (k, H, W)``."""

    def __init__(
        self, height: int, width: int, count: int, cells: int, probability: float, seed: int, device: torch.device
    ) -> None:
        self.height, self.width = height, width
        cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
        generator = torch.Generator(device=device).manual_seed(seed)
        draws = torch.rand((count, cells, cells), generator=generator, device=device)
        self.grids = draws < probability  # bool: a byte per cell, made float per batch
        self.shifts_h = torch.randint(0, cell_h, (count, 1), generator=generator, device=device).to(torch.int16)
        self.shifts_w = torch.randint(0, cell_w, (count, 1), generator=generator, device=device).to(torch.int16)
        self.upsample_h = _linear_upsampling(cells, (cells + 1) * cell_h, device)  # (U_h, cells)
        self.upsample_w = _linear_upsampling(cells, (cells + 1) * cell_w, device)  # (U_w, cells)
        self.rows = torch.arange(height, device=device)
        self.columns = torch.arange(width, device=device)

    def __len__(self) -> int:
        return len(self.grids)

    def __call__(self, index: Tensor) -> Tensor:
        """index: (k,) long -> masks (k, H, W) in [0, 1], float32."""
        rows = self.upsample_h[self.shifts_h[index] + self.rows]  # (k, H, cells)
        columns = self.upsample_w[self.shifts_w[index] + self.columns]  # (k, W, cells)
        return rows @ self.grids[index].float() @ columns.transpose(1, 2)

    def nbytes(self) -> int:
        """What the set keeps: grids and shifts (the upsampling factors are shared by every mask)."""
        return sum(t.numel() * t.element_size() for t in (self.grids, self.shifts_h, self.shifts_w))


def _linear_upsampling(size: int, out: int, device: torch.device) -> Tensor:
    """(out, size): the matrix of 1-D linear upsampling (``align_corners=False``), the factor of bilinear."""
    eye = torch.eye(size, device=device).unsqueeze(0)  # (1, size channels, size)
    return F.interpolate(eye, size=out, mode="linear", align_corners=False)[0].t().contiguous()


@functools.lru_cache(maxsize=8)
def mask_set(
    height: int, width: int, count: int, cells: int, probability: float, seed: int, device: torch.device
) -> MaskSet:
    """The masks for these settings, made once and reused (at most 8 sets are kept)."""
    return MaskSet(height, width, count, cells, probability, seed, device)


class RISE(PerturbationExplainer):
    """``RISE(network, activation_fn, perturbation_per_eval=None, *, num_masks=6000, num_cells=10,
    keep_probability=0.5, seed=0, tolerance=None, inference_copy=True)(inputs, targets) -> (N, 1 or l, H, W)``.

    Defaults are MindSpore XAI's (6,000 masks, a 10 x 10 grid, p = 0.5). ``seed=None`` draws new masks
    on every call (from torch's global generator) instead of reusing the cached set.

    ``tolerance``: stop an image early once its map is precise enough: every 500 masks (two blocks of
    250), the standard error of the map, estimated from the difference of the maps of the even and the
    odd blocks, relative to the map's own variation (``||S_even - S_odd|| / 2 / ||S - mean(S)||``), is
    below ``tolerance``. ``masks_used`` then holds, per image of the last call, how many masks its map
    averages. None (the default): all ``num_masks``.
    """

    def __init__(
        self,
        network: nn.Module,
        activation_fn: ActivationFn,
        perturbation_per_eval: int | None = None,
        *,
        num_masks: int = 6000,
        num_cells: int = 10,
        keep_probability: float = 0.5,
        seed: int | None = 0,
        tolerance: float | None = None,
        inference_copy: bool = True,
    ) -> None:
        super().__init__(network, activation_fn, perturbation_per_eval, inference_copy=inference_copy)
        self.tolerance = None if tolerance is None else check_number(tolerance, "tolerance", low=0.0)
        self.masks_used: list[int] = []
        self.num_masks = check_positive_int(num_masks, "num_masks")
        if num_masks > MAX_MASKS:
            raise ValueError(f"num_masks must be <= {MAX_MASKS}, got {num_masks}")
        self.num_cells = check_positive_int(num_cells, "num_cells")
        self.keep_probability = check_number(keep_probability, "keep_probability", low=0.0, high=1.0)
        if self.keep_probability in (0.0, 1.0):
            raise ValueError(f"keep_probability must be within (0, 1), got {keep_probability}")
        self.seed = None if seed is None else check_positive_int(seed, "seed", minimum=0)

    def masks_for(self, inputs: Tensor) -> MaskSet:
        height, width = inputs.shape[-2:]
        if self.seed is None:
            seed = int(torch.randint(0, 2**62, ()))
            return MaskSet(height, width, self.num_masks, self.num_cells, self.keep_probability, seed, inputs.device)
        args = (height, width, self.num_masks, self.num_cells, self.keep_probability, self.seed, inputs.device)
        return mask_set(*args)

    def explain(self, inputs: Tensor, targets: Tensor, progress: Progress | None = None) -> Tensor:
        masks = self.masks_for(inputs)
        if self.tolerance is None or len(masks) <= CONVERGENCE_MIN:
            self.masks_used = [len(masks)] * len(inputs)
            total = self.perturb(
                inputs, targets, count=len(masks), masks=_keep_and_credit(masks, 0), weigh=self.weigh(inputs),
                progress=progress,
            )  # fmt: skip
            return total / (len(masks) * self.keep_probability)
        return self._until_converged(inputs, targets, masks, self.tolerance, progress)

    def _until_converged(
        self, inputs: Tensor, targets: Tensor, masks: MaskSet, tolerance: float, progress: Progress | None
    ) -> Tensor:
        """Blocks of masks over the images whose map is not yet precise enough; each image's map averages
        its own count. The precision is estimated by splitting the masks in two halves (even and odd
        blocks): the half maps differ by about twice the standard error of their mean."""
        n = len(inputs)
        halves = inputs.new_zeros((2, n, targets.shape[1], *inputs.shape[-2:]), dtype=torch.float32)
        used = torch.zeros(2, n, dtype=torch.long, device=inputs.device)
        active = torch.arange(n, device=inputs.device)
        for block, offset in enumerate(range(0, len(masks), CONVERGENCE_BLOCK)):
            count = min(CONVERGENCE_BLOCK, len(masks) - offset)
            subset = inputs[active]
            part = self.perturb(
                subset, targets[active], count=count, masks=_keep_and_credit(masks, offset), weigh=self.weigh(subset)
            )
            halves[block % 2, active] += part.float()
            used[block % 2, active] += count
            if progress is not None:
                progress((offset + count) / len(masks))
            if offset + count >= CONVERGENCE_MIN and block % 2 == 1:
                means = halves[:, active] / used[:, active].view(2, -1, 1, 1, 1)
                mean = means.mean(dim=0)
                error = (means[0] - means[1]).flatten(1).norm(dim=1) / 2
                spread = (mean - mean.mean(dim=(2, 3), keepdim=True)).flatten(1).norm(dim=1)
                active = active[error > tolerance * spread]
                if len(active) == 0:
                    break
        self.masks_used = used.sum(dim=0).tolist()
        return halves.sum(dim=0) / (used.sum(dim=0).view(-1, 1, 1, 1).to(halves.dtype) * self.keep_probability)

    def weigh(self, inputs: Tensor) -> Weigh:
        """The weights of the masked images of ``inputs``: here the class probabilities."""
        return lambda batch, images: self.probabilities(batch)


def _keep_and_credit(masks: MaskSet, offset: int) -> Masks:
    """Mask ``offset + k`` of the set for perturbation ``k``: kept where the image shows, credited where it shows."""

    def keep_and_credit(index: Tensor) -> tuple[Tensor, Tensor]:
        mask = masks(index + offset)
        return mask, mask

    return keep_and_credit
