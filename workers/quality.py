"""The quality scores a job asked for (``core/quality.py``), of every map of its images.

The free scores read the maps. The faithfulness scores (deletion and insertion AUC, confidence change)
run ``workers/xai/quality.py``'s batched passes: images with as many maps run together, and every map
of an image (each method, each target) shares the image's own pass and its references'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

import torch
from torch import Tensor

from core.contract import JobSpec
from core.quality import QualityOptions
from workers.methods import Context, probabilities
from workers.xai.quality import blurred, complexity, constant, faithfulness, mean_colour, sparseness

QUALITY_BATCH = 64  # images per forward pass of the faithfulness scores
FORWARD_SCORES = frozenset({"deletion_auc", "insertion_auc", "confidence_change"})
MapScores = dict[tuple[str, int], dict[str, float]]  # (method, target) -> score name -> value


def needs_passes(spec: JobSpec) -> bool:
    return not FORWARD_SCORES.isdisjoint(spec.quality)


def score_maps(
    spec: JobSpec,
    context: Context,
    inputs: Tensor,
    maps: list[dict[str, Tensor]],
    targets: list[list[int]],
    progress: Callable[[float], None],
) -> list[MapScores]:
    """Per image (``inputs[i]``, its ``maps[i]`` by method, each (L, H, W) for its L ``targets[i]``), the
    scores of each of its maps."""
    wanted, methods = spec.quality, [call.name for call in spec.methods]
    found: list[MapScores] = [{} for _ in maps]
    if not wanted:
        return found
    keys = [[(method, target) for method in methods for target in mine] for mine in targets]
    stacks = [torch.cat([image[method].float() for method in methods]) for image in maps]  # (M, H, W) each
    groups = _same_shape(stacks)
    free = {name: score for name, score in (("sparseness", sparseness), ("complexity", complexity)) if name in wanted}
    for rows in groups.values():  # one call per score for the images whose maps stack
        values = {name: score(torch.stack([stacks[i] for i in rows])).tolist() for name, score in free.items()}
        for position, image in enumerate(rows):
            for column, key in enumerate(keys[image]):
                found[image][key] = {name: _value(scored[position][column]) for name, scored in values.items()}
    if not needs_passes(spec):
        return _finite(found)
    to_probabilities = probabilities(context.probabilities)
    done = 0
    for rows in groups.values():
        chosen = inputs[rows]
        references = references_for(chosen, spec.quality_options, wanted)
        share = len(rows) / len(stacks)
        result = faithfulness(
            lambda batch: to_probabilities(context.network(batch)),
            chosen,
            torch.stack([stacks[i] for i in rows]).to(inputs.device),
            torch.tensor([[target for _, target in keys[i]] for i in rows]),
            steps=spec.quality_options.steps,
            batch_size=QUALITY_BATCH,
            progress=lambda fraction, first=done, part=share: progress(first + fraction * part),
            **references,
        )
        done += share
        columns = {
            "deletion_auc": result.deletion_auc,
            "insertion_auc": result.insertion_auc,
            "confidence_change": result.confidence_change,
        }
        for position, image in enumerate(rows):
            for name, column in columns.items():
                if column is None:
                    continue
                for index, key in enumerate(keys[image]):
                    found[image][key][name] = _value(float(column[position, index]))
    return _finite(found)


def _same_shape(stacks: list[Tensor]) -> dict[tuple[int, ...], list[int]]:
    """The images whose stacks of maps have one shape (as many maps, of one size), by that shape."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for image, stack in enumerate(stacks):
        groups.setdefault(tuple(stack.shape), []).append(image)
    return groups


def reference_images(inputs: Tensor, kind: str, blur: float) -> Tensor:
    """The reference of each image (``QualityOptions``' kinds): its blur, its mean colour, or 0."""
    if kind == "blur":
        return blurred(inputs, blur)
    return mean_colour(inputs) if kind == "mean" else constant(inputs)


def _value(value: float) -> float:
    return round(value, 6)


def _finite(found: list[MapScores]) -> list[MapScores]:
    """A map with a NaN or an infinity in it has no score of that kind (JSON holds neither)."""
    return [
        {key: {name: value for name, value in scores.items() if math.isfinite(value)} for key, scores in image.items()}
        for image in found
    ]


def references_for(inputs: Tensor, options: QualityOptions, wanted: Collection[str]) -> dict[str, Tensor | None]:
    """The reference images each asked-for score needs (keyword arguments of ``faithfulness``), each kind made
    once."""
    made: dict[str, Tensor] = {}

    def reference(kind: str) -> Tensor:
        if kind not in made:
            made[kind] = reference_images(inputs, kind, options.blur)
        return made[kind]

    deletion = reference(options.deletion_reference)
    return {
        "deletion_reference": deletion if "deletion_auc" in wanted else None,
        "insertion_reference": reference(options.insertion_reference) if "insertion_auc" in wanted else None,
        "confidence_reference": deletion if "confidence_change" in wanted else None,
    }
