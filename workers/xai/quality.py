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
from collections.abc import Callable
from dataclasses import dataclass

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
    values = maps.detach().abs().flatten(-2).double().sort(dim=-1).values
    count = values.shape[-1]
    weights = 2 * torch.arange(1, count + 1, dtype=values.dtype, device=values.device) - count - 1
    total = values.sum(-1)
    gini = (values * weights).sum(-1) / (count * total.clamp_min(torch.finfo(values.dtype).tiny))
    return torch.where(total > 0, gini, torch.zeros_like(gini)).float()


def complexity(maps: Tensor) -> Tensor:
    """(...) Entropy of each (H, W) map's absolute values as a distribution over its pixels, over log(H W):
    0 for a single pixel, 1 for a uniform map (and for a zero map, which ranks no pixel above another)."""
    values = maps.detach().abs().flatten(-2).double()
    total = values.sum(-1, keepdim=True)
    share = values / total.clamp_min(torch.finfo(values.dtype).tiny)
    entropy = -torch.special.xlogy(share, share).sum(-1) / math.log(values.shape[-1])
    return torch.where(total[..., 0] > 0, entropy, torch.ones_like(entropy)).float()


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

    inputs (N, C, H, W); maps (N, M, H, W); targets (N, M) class ids; references like ``inputs``. Step k of S
    changes the round(k H W / S) most salient pixels; the two ends of each curve are the image and the
    reference, passed once per image for all its maps. ``scores`` must give probabilities."""
    count, per_image = maps.shape[:2]
    if inputs.shape[0] != count or targets.shape != maps.shape[:2] or maps.shape[-2:] != inputs.shape[-2:]:
        raise ValueError(
            f"inputs {tuple(inputs.shape)}, maps {tuple(maps.shape)} and targets {tuple(targets.shape)} disagree"
        )
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    kinds = {"deletion": deletion_reference, "insertion": insertion_reference}
    kinds = {kind: reference for kind, reference in kinds.items() if reference is not None}
    pixels = maps.shape[-1] * maps.shape[-2]
    cutoffs = torch.round(torch.arange(1, steps, device=maps.device) * pixels / steps)
    rows_per_image = 1 + sum(1 + per_image * (steps - 1) for _ in kinds)
    rows_per_image += 0 if confidence_reference is None else per_image
    group = max(1, batch_size // rows_per_image)  # images whose passes are built and run together
    found = Faithfulness()
    curves = {kind: torch.empty(count, per_image, steps + 1) for kind in kinds}
    change = torch.empty(count, per_image) if confidence_reference is not None else None
    for start in range(0, count, group):
        end = min(count, start + group)
        batch, layout = _perturbed(inputs[start:end], maps[start:end], cutoffs, kinds, confidence_reference, start)
        if inputs.is_contiguous(memory_format=torch.channels_last):  # as the network was given its inputs
            batch = batch.contiguous(memory_format=torch.channels_last)
        report = None if progress is None else _part(progress, start / count, (end - start) / count)
        probabilities = _run(scores, batch, batch_size, report)
        found.passes += len(batch)
        for image in range(start, end):
            wanted = targets[image].to(probabilities.device)
            original = probabilities[layout[image, "image"], wanted]
            for kind in kinds:
                first, last = layout[image, kind]
                inner = probabilities[first:last].reshape(per_image, steps - 1, -1)
                inner = inner.gather(2, wanted[:, None, None].expand(-1, steps - 1, 1))[..., 0]
                ref = probabilities[layout[image, kind + "-reference"], wanted]
                ends = (original, ref) if kind == "deletion" else (ref, original)
                curves[kind][image] = torch.cat([ends[0][:, None], inner, ends[1][:, None]], dim=1).float().cpu()
            if change is not None:
                first, last = layout[image, "confidence"]
                moved = probabilities[first:last].gather(1, wanted[:, None])[:, 0]
                change[image] = (moved - original).float().cpu()
    found.deletion, found.insertion = curves.get("deletion"), curves.get("insertion")
    found.confidence_change = change
    return found


def _perturbed(
    inputs: Tensor,
    maps: Tensor,
    cutoffs: Tensor,
    kinds: dict[str, Tensor],
    confidence_reference: Tensor | None,
    offset: int,
) -> tuple[Tensor, dict[tuple[int, str], int | tuple[int, int]]]:
    """Every image these passes need, stacked, and where each image's rows lie in the stack."""
    pieces: list[Tensor] = []
    layout: dict[tuple[int, str], int | tuple[int, int]] = {}
    row = 0
    changed = salience_ranks(maps)[:, :, None] < cutoffs[None, None, :, None, None]  # (n, M, S - 1, H, W)
    for index, image in enumerate(inputs):
        key = offset + index
        pieces.append(image[None])
        layout[key, "image"] = row
        row += 1
        for kind, references in kinds.items():
            reference = references[offset + index].to(image.device)
            mask = changed[index][:, :, None]  # (M, S - 1, 1, H, W)
            steps = torch.where(mask, reference, image) if kind == "deletion" else torch.where(mask, image, reference)
            pieces += [reference[None], steps.flatten(0, 1)]
            layout[key, kind + "-reference"] = row
            layout[key, kind] = (row + 1, row + 1 + len(pieces[-1]))
            row += 1 + len(pieces[-1])
        if confidence_reference is not None:
            reference = confidence_reference[offset + index].to(image.device)
            weights = maps[index].detach().clamp_min(0)
            weights = weights / weights.flatten(1).amax(1).clamp_min(torch.finfo(weights.dtype).tiny)[:, None, None]
            pieces.append(reference + weights[:, None] * (image - reference))
            layout[key, "confidence"] = (row, row + len(pieces[-1]))
            row += len(pieces[-1])
    return torch.cat(pieces), layout


def _part(progress: Progress, first: float, share: float) -> Progress:
    return lambda done: progress(first + done * share)


def _run(scores: Scores, batch: Tensor, batch_size: int, progress: Progress | None) -> Tensor:
    """Probabilities of the batch, ``batch_size`` images a pass; ``progress`` after each pass (it may raise to
    stop)."""
    found = []
    chunks = batch.split(batch_size)
    with torch.inference_mode():
        for number, chunk in enumerate(chunks):
            found.append(scores(chunk).float())
            if progress is not None:
                progress((number + 1) / len(chunks))
    return torch.cat(found)


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


def rank_correlation(first: Tensor, second: Tensor) -> Tensor:
    """(..., H, W) twice -> (...) Spearman correlation of the absolute values of each pair of maps (the
    Pearson correlation of their ranks; ties in reading order)."""
    return correlation(salience_ranks(first.abs()).float(), salience_ranks(second.abs()).float())


def randomised_copy(network: nn.Module, layers: int, seed: int = 0) -> nn.Module:
    """A copy of ``network`` with the parameters of its last ``layers`` parameterised modules (in the order
    they were defined: the classifier first) drawn again by their own initialisers; the rest as trained."""
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
