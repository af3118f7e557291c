"""How far to trust a saliency map: scores of its shape, of its faithfulness to the network, and, where
the object's mask is known, of its localisation.

Maps come as (N, M, H, W): M maps of each of N images (methods x targets), at the input's size.

- free, from the map alone: :func:`sparseness` (the Gini index of |map|: higher is more concentrated,
  Chalasani et al., 2020) and :func:`complexity` (the entropy of |map| as a distribution over pixels,
  divided by its largest value log(H W): lower is simpler, Bhatt et al., 2020);
- with forward passes: :func:`faithfulness` gives deletion and insertion curves and their areas
  (Petsiuk et al., 2018: the target's probability as the pixels are removed, or revealed, most salient
  first; a good map has a *low* deletion area and a *high* insertion area) and the confidence change of
  the image multiplied by the map (pytorch-grad-cam's ``CamMultImageConfidenceChange``: higher is
  better). The passes of every map of every image run as batches of ``batch_size`` images, and the
  passes every map of an image shares (the image itself, each reference) run once;
- against ground truth: :func:`pointing_hits` (TorchRay's pointing game), :func:`iosr`
  (intersection over the salient region, as MindSpore XAI's localisation); between maps:
  :func:`correlation` (class sensitivity: the maps of the most and least probable class should not
  correlate) and :func:`rank_correlation` with :func:`randomised_copy` (Adebayo et al., 2018's
  randomisation check: a map that does not change when the network's top layers are re-initialised
  does not depend on what the network learned).
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._smoothing import smooth_maps

Scores = Callable[[Tensor], Tensor]  # inputs (B, C, H, W) -> class probabilities (B, K)
Progress = Callable[[float], None]
BLUR = 0.15  # the blurred reference's Gaussian, in units of the image's longer side


def sparseness(maps: Tensor) -> Tensor:
    """(...) Gini index of each (H, W) map's absolute values: 0 for a uniform (or zero) map, (n - 1) / n for a
    map with a single non-zero pixel of n."""
    if _on_numpy(maps):
        return _by_rows(maps, _gini_rows)
    values = maps.detach().abs().flatten(-2).sort(dim=-1).values.double()
    count = values.shape[-1]
    weights = 2 * torch.arange(1, count + 1, dtype=values.dtype, device=values.device) - count - 1
    total = values.sum(-1)
    gini = (values * weights).sum(-1) / (count * total.clamp_min(torch.finfo(values.dtype).tiny))
    return torch.where(total > 0, gini, torch.zeros_like(gini)).float()


def complexity(maps: Tensor) -> Tensor:
    """(...) Entropy of each (H, W) map's absolute values as a distribution over its pixels, over log(H W):
    0 for a single pixel, 1 for a uniform map (and for a zero map, which ranks no pixel above another)."""
    if _on_numpy(maps):
        return _by_rows(maps, _entropy_rows)
    values = maps.detach().abs().flatten(-2).double()
    total = values.sum(-1, keepdim=True)
    share = values / total.clamp_min(torch.finfo(values.dtype).tiny)
    entropy = -torch.special.xlogy(share, share).sum(-1) / math.log(values.shape[-1])
    return torch.where(total[..., 0] > 0, entropy, torch.ones_like(entropy)).float()


# On a CPU the free scores run in numpy: its vectorised sort took 0.13–1 ms for a 224x224 map (by CPU) where
# torch's took 3.2 ms; numpy runs no OpenMP region, whose idle team would spin on the other cores while the
# sort runs; and it lets go of the interpreter lock, so the maps are scored in parts on as many threads as
# torch's (the job's) own. No BLAS call either: OpenBLAS's threads spin for a while after each.


def _on_numpy(maps: Tensor) -> bool:
    return maps.device.type == "cpu" and maps.dtype in (torch.float32, torch.float64) and maps.dim() >= 2


def _gini_rows(values: np.ndarray) -> np.ndarray:
    """Rows of absolute values (sorted here, in place) -> their Gini indices."""
    values.sort(axis=-1)
    count = values.shape[-1]
    weights = 2 * np.arange(1, count + 1, dtype=np.float64) - count - 1
    total = values.sum(-1, dtype=np.float64)
    weighted = np.einsum("ij,j->i", values, weights, dtype=np.float64)
    return np.where(total > 0, weighted / (count * np.maximum(total, np.finfo(np.float64).tiny)), 0.0)


def _entropy_rows(values: np.ndarray) -> np.ndarray:
    """Rows of absolute values -> their entropies over log(count)."""
    total = values.sum(-1, keepdims=True, dtype=np.float64)
    share = values / np.maximum(total, np.finfo(np.float64).tiny)
    logs = np.log(share, out=np.zeros_like(share), where=share > 0)
    entropy = -np.einsum("ij,ij->i", share, logs) / math.log(values.shape[-1])
    return np.where(total[:, 0] > 0, entropy, 1.0)


_scorers: tuple[ThreadPoolExecutor, int, int] | None = None  # the pool, its size, the process that made it
_scorers_lock = threading.Lock()


def _scoring_pool(parts: int) -> ThreadPoolExecutor:
    """The helper threads, at least ``parts`` of them; made again in a forked child, where the parent's
    threads do not exist (a submit there would wait for ever)."""
    global _scorers
    with _scorers_lock:
        if _scorers is None or _scorers[1] < parts or _scorers[2] != os.getpid():
            if _scorers is not None and _scorers[2] == os.getpid():
                _scorers[0].shutdown(wait=False)
            _scorers = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="xai-scores"), parts, os.getpid()
        return _scorers[0]


def _by_rows(maps: Tensor, score: Callable[[np.ndarray], np.ndarray]) -> Tensor:
    """``score`` of each (H, W) map's absolute values as rows, in up to ``torch.get_num_threads()`` parts at
    once; the result in the maps' leading shape, float32 like the torch path's."""
    values = np.abs(maps.detach().contiguous().numpy().reshape(-1, maps.shape[-2] * maps.shape[-1]))
    parts = min(len(values), torch.get_num_threads())
    if parts < 2:
        found = score(values)
    else:
        pool = _scoring_pool(parts)
        running = [pool.submit(score, chunk) for chunk in np.array_split(values, parts)]  # views: sorted in place
        found = np.concatenate([done.result() for done in running])
    return torch.from_numpy(found.reshape(maps.shape[:-2])).float()


def blurred(inputs: Tensor, blur: float = BLUR) -> Tensor:
    """The insertion reference of Petsiuk et al.: the image under a Gaussian of ``blur`` x its longer side."""
    return smooth_maps(inputs, blur)


def constant(inputs: Tensor, value: float = 0.0) -> Tensor:
    """A constant reference: 0 in a normalised network input is the data set's mean colour."""
    return torch.full_like(inputs, value)


def mean_colour(inputs: Tensor) -> Tensor:
    """Each image's own mean colour everywhere: no shape, and no colour the image lacks (a region filled with
    the data set's mean colour can stand out and keep the object's outline)."""
    return inputs.mean(dim=(-2, -1), keepdim=True).expand_as(inputs).clone()


def salience_ranks(maps: Tensor, seed: int = 0) -> Tensor:
    """(..., H, W) -> each pixel's place when the map's values are sorted from the largest (0) down. Ties are
    broken by a fixed random order of the pixels (``seed``): a map that does not order some pixels is scored
    as a random order of them would be, not as an order (reading order, say) that happens to suit the image."""
    flat = maps.detach().flatten(-2)
    shuffle = torch.randperm(flat.shape[-1], generator=torch.Generator().manual_seed(seed)).to(flat.device)
    order = shuffle[torch.argsort(flat[..., shuffle], dim=-1, descending=True, stable=True)]
    places = torch.arange(flat.shape[-1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, places).reshape(maps.shape)


def area(curves: Tensor) -> Tensor:
    """(..., S + 1) curves sampled at 0, 1/S, ..., 1 -> their areas (the trapezoidal rule)."""
    steps = curves.shape[-1] - 1
    return (curves.sum(-1) - (curves[..., 0] + curves[..., -1]) / 2) / steps


@dataclass
class Faithfulness:
    """Per map of :func:`faithfulness`; a field is None when it was not asked for."""

    deletion: Tensor | None = None  # (N, M, S + 1): the target's probability as pixels are removed
    insertion: Tensor | None = None  # (N, M, S + 1): ... as they are revealed over the reference
    confidence_change: Tensor | None = None  # (N, M): p(image x map) - p(image)
    passes: int = 0  # forward passes (images through the network) this took

    @property
    def deletion_auc(self) -> Tensor | None:
        return None if self.deletion is None else area(self.deletion)

    @property
    def insertion_auc(self) -> Tensor | None:
        return None if self.insertion is None else area(self.insertion)


def faithfulness(
    scores: Scores,
    inputs: Tensor,
    maps: Tensor,
    targets: Tensor,
    *,
    steps: int = 16,
    deletion_reference: Tensor | None = None,
    insertion_reference: Tensor | None = None,
    confidence_reference: Tensor | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> Faithfulness:
    """Deletion curves where ``deletion_reference`` is given (removed pixels take its values), insertion curves
    where ``insertion_reference`` is (the image starts as it), the confidence change where
    ``confidence_reference`` is (the image becomes reference + map' x (image - reference), map' the map's
    positive part over its maximum; a zero reference multiplies the image by the map).

    inputs (N, C, H, W); maps (N, M, H, W); targets (N, M) class ids; references like ``inputs``. A curve has
    ``steps`` + 1 points: step k of S changes the round(k H W / S) most salient pixels, so its two ends are the
    image and the reference, passed once per image for all its maps, and each map costs S - 1 passes per
    curve. The images are built ``batch_size`` at a time as the passes need them: memory does not grow with
    the number of maps or steps. ``scores`` must give probabilities."""
    count, per_image = maps.shape[:2]
    if inputs.shape[0] != count or targets.shape != maps.shape[:2] or maps.shape[-2:] != inputs.shape[-2:]:
        raise ValueError(
            f"inputs {tuple(inputs.shape)}, maps {tuple(maps.shape)} and targets {tuple(targets.shape)} disagree"
        )
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    plan = _Plan(inputs, maps, steps, deletion_reference, insertion_reference, confidence_reference)
    targets = targets.to(inputs.device)
    found = Faithfulness()
    image_p = torch.empty(count, per_image, device=inputs.device)
    reference_p = {kind: torch.empty(count, per_image, device=inputs.device) for kind in plan.kinds}
    inner = {kind: torch.empty(count, per_image, steps - 1, device=inputs.device) for kind in plan.kinds}
    moved = torch.empty(count, per_image, device=inputs.device)
    total = count * plan.rows_per_image
    channels_last = inputs.is_contiguous(memory_format=torch.channels_last)  # as the network was given them
    for start in range(0, total, batch_size):
        end = min(total, start + batch_size)
        batch, pieces = plan.build(start, end)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probabilities = scores(batch).float()
        found.passes += len(batch)
        for image, segment, first, last, row in pieces:
            wanted = targets[image]
            if segment == "image":
                image_p[image] = probabilities[row, wanted]
            elif segment.endswith("-reference"):
                reference_p[segment.removesuffix("-reference")][image] = probabilities[row, wanted]
            else:
                local = torch.arange(first, last, device=inputs.device)
                column = local // (steps - 1) if segment != "confidence" else local
                values = probabilities[row : row + last - first].gather(1, wanted[column][:, None])[:, 0]
                if segment == "confidence":
                    moved[image, column] = values
                else:
                    inner[segment][image, column, local % (steps - 1)] = values
        if progress is not None:
            progress(end / total)
    for kind in plan.kinds:
        ends = (image_p, reference_p[kind]) if kind == "deletion" else (reference_p[kind], image_p)
        curve = torch.cat([ends[0][..., None], inner[kind], ends[1][..., None]], dim=-1).cpu()
        setattr(found, kind, curve)
    if confidence_reference is not None:
        found.confidence_change = (moved - image_p).cpu()
    return found


class _Plan:
    """The rows of every image's passes, in order (the image, then per curve its reference and each map's
    inner steps, then each map's confidence image), and how to build any span of them."""

    def __init__(
        self,
        inputs: Tensor,
        maps: Tensor,
        steps: int,
        deletion: Tensor | None,
        insertion: Tensor | None,
        confidence: Tensor | None,
    ) -> None:
        self.inputs, self.maps, self.steps = inputs, maps, steps
        self.kinds = {kind: ref for kind, ref in (("deletion", deletion), ("insertion", insertion)) if ref is not None}
        self.confidence = confidence
        per_image = maps.shape[1]
        pixels = maps.shape[-1] * maps.shape[-2]
        self.cutoffs = torch.round(torch.arange(1, steps, device=inputs.device) * pixels / steps).int()
        self.ranks = salience_ranks(maps).to(inputs.device, torch.int32)  # (N, M, H, W)
        self.segments: list[tuple[str, int]] = [("image", 1)]
        for kind in self.kinds:
            self.segments += [(kind + "-reference", 1), (kind, per_image * (steps - 1))]
        if confidence is not None:
            self.segments.append(("confidence", per_image))
        self.rows_per_image = sum(length for _, length in self.segments)

    def build(self, start: int, end: int) -> tuple[Tensor, list[tuple[int, str, int, int, int]]]:
        """The images of rows [start, end) stacked, and per piece (image, segment, its first and last index
        within the segment, its first row in the stack)."""
        stack: list[Tensor] = []
        pieces: list[tuple[int, str, int, int, int]] = []
        row = 0
        for image in range(start // self.rows_per_image, (end - 1) // self.rows_per_image + 1):
            base = image * self.rows_per_image
            offset = 0
            for segment, length in self.segments:
                first = max(start - base - offset, 0)
                last = min(end - base - offset, length)
                offset += length
                if first >= last:
                    continue
                stack.append(self._images(image, segment, first, last))
                pieces.append((image, segment, first, last, row))
                row += last - first
        return torch.cat(stack), pieces

    def _images(self, image: int, segment: str, first: int, last: int) -> Tensor:
        x = self.inputs[image]
        if segment == "image":
            return x[None]
        if segment.endswith("-reference"):
            return self.kinds[segment.removesuffix("-reference")][image].to(x.device)[None]
        local = torch.arange(first, last, device=x.device)
        if segment == "confidence":
            reference = self.confidence[image].to(x.device)
            weights = self.maps[image, local].detach().to(x.device, x.dtype).clamp_min(0)
            weights = weights / weights.flatten(1).amax(1).clamp_min(torch.finfo(weights.dtype).tiny)[:, None, None]
            return reference + weights[:, None] * (x - reference)
        reference = self.kinds[segment][image].to(x.device)
        changed = self.ranks[image, local // (self.steps - 1)] < self.cutoffs[local % (self.steps - 1), None, None]
        changed = changed[:, None]  # (R, 1, H, W)
        return torch.where(changed, reference, x) if segment == "deletion" else torch.where(changed, x, reference)


def grown(masks: Tensor, tolerance: int) -> Tensor:
    """(N, H, W) bool masks dilated by a disk of radius ``tolerance`` pixels."""
    if tolerance <= 0:
        return masks.bool()
    offsets = torch.arange(-tolerance, tolerance + 1, device=masks.device)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= tolerance**2).float()[None, None]
    return F.conv2d(masks[:, None].float(), disk, padding=tolerance)[:, 0] > 0


def pointing_hits(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """maps (N, H, W), masks (N, H, W) bool -> (N,) bool: the map's maximum lies on the mask grown by
    ``tolerance`` (TorchRay: 15 px at 224 x 224). Ties: the first maximum in reading order."""
    peaks = maps.detach().flatten(1).argmax(dim=1)
    return grown(masks, tolerance).flatten(1).gather(1, peaks[:, None])[:, 0]


def iosr(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """maps (N, H, W), masks (N, H, W) bool -> (N,) the share of the salient region (the pixels at or above
    ``threshold`` of the map scaled to [0, 1] by its minimum and maximum) that lies on the mask. A flat map
    is salient everywhere."""
    flat = maps.detach().flatten(1).double()
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    scaled = (flat - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny)
    salient = (scaled >= threshold) | (high == low)
    inside = (salient & masks.flatten(1).bool()).sum(1)
    return (inside / salient.sum(1)).float()


def correlation(first: Tensor, second: Tensor) -> Tensor:
    """(..., H, W) twice -> (...) Pearson correlation of each pair of maps; 0 where either map is flat."""
    a, b = first.detach().flatten(-2).double(), second.detach().flatten(-2).double()
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    found = (a * b).sum(-1) / norms.clamp_min(torch.finfo(a.dtype).tiny)
    return torch.where(norms > 0, found, torch.zeros_like(found)).float()


def average_ranks(values: Tensor) -> Tensor:
    """(..., n) -> each value's rank from 0 (the smallest) up, tied values sharing the mean of their places."""
    ordered, order = values.sort(dim=-1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    group = starts.cumsum(-1) - 1  # each sorted value's tie group
    places = torch.arange(values.shape[-1], dtype=torch.float64, device=values.device).expand(ordered.shape)
    sums = torch.zeros_like(places).scatter_add_(-1, group, places)
    counts = torch.zeros_like(places).scatter_add_(-1, group, torch.ones_like(places))
    mean = (sums / counts.clamp_min(1)).gather(-1, group)
    return torch.empty_like(mean).scatter_(-1, order, mean)


def rank_correlation(first: Tensor, second: Tensor) -> Tensor:
    """(..., H, W) twice -> (...) Spearman correlation of the absolute values of each pair of maps: the Pearson
    correlation of their ranks, ties ranked by their mean place; 0 where either map is flat."""
    a = average_ranks(first.detach().abs().flatten(-2).double())
    b = average_ranks(second.detach().abs().flatten(-2).double())
    return correlation(a[..., None], b[..., None])


def randomised_copy(network: nn.Module, layers: int, seed: int = 0) -> nn.Module:
    """A copy of ``network`` with the parameters of its last ``layers`` parameterised modules (in the order
    they were defined: the classifier first) drawn again by their own initialisers; the rest as trained."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    clone = copy.deepcopy(network)
    owners = [module for module in clone.modules() if any(True for _ in module.parameters(recurse=False))]
    if not owners:
        raise ValueError("the network has no parameters to re-initialise")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in reversed(owners[-layers:]):
            reset = getattr(module, "reset_parameters", None)
            if reset is None:
                for parameter in module.parameters(recurse=False):
                    with torch.no_grad():
                        parameter.normal_(0, 0.02)
            else:
                with torch.no_grad():
                    reset()
    return clone.eval()
