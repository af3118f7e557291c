"""The quality scores a job can return beside each map, and those ``xai evaluate`` reports offline.

One catalogue: what each score measures, which way is better, what it costs. The request names the
per-map scores it wants (``quality``) and how the faithfulness scores run (``quality_options``); the
worker computes them with ``workers/xai/quality.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

QualityName = Literal["sparseness", "complexity", "deletion_auc", "insertion_auc", "confidence_change"]
DEFAULT_QUALITY: list[QualityName] = ["sparseness", "complexity"]  # free: no forward pass


@dataclass(frozen=True)
class QualityScore:
    name: str
    title: str
    description: str
    better: Literal["higher", "lower"]
    cost: str
    per_map: bool  # returned with each map of a job; otherwise reported by ``xai evaluate`` only
    range: tuple[float, float]

    def describe(self) -> dict[str, Any]:
        return asdict(self)


SCORES: dict[str, QualityScore] = {
    score.name: score
    for score in [
        QualityScore(
            "sparseness",
            "Sparseness",
            "Gini index of the map's absolute values: how concentrated the map is (Chalasani et al., 2020).",
            "higher",
            "free: computed from the map",
            True,
            (0.0, 1.0),
        ),
        QualityScore(
            "complexity",
            "Complexity",
            "Entropy of the map's absolute values as a distribution over its pixels, over its largest value: how "
            "spread out the map is (Bhatt et al., 2020).",
            "lower",
            "free: computed from the map",
            True,
            (0.0, 1.0),
        ),
        QualityScore(
            "deletion_auc",
            "Deletion AUC",
            "Area under the target's probability as the map's most salient pixels are replaced by the reference, "
            "in `steps` steps (Petsiuk et al., 2018): a faithful map's pixels matter, so the probability falls fast.",
            "lower",
            "steps - 1 forward passes per map, batched with the image's other maps; 2 per image shared",
            True,
            (0.0, 1.0),
        ),
        QualityScore(
            "insertion_auc",
            "Insertion AUC",
            "Area under the target's probability as the map's most salient pixels are revealed over the reference "
            "(Petsiuk et al., 2018): a faithful map's pixels are enough, so the probability rises fast.",
            "higher",
            "steps - 1 forward passes per map, batched with the image's other maps; 2 per image shared",
            True,
            (0.0, 1.0),
        ),
        QualityScore(
            "confidence_change",
            "Confidence change",
            "The target's probability for the image blended towards the deletion reference where the map is low "
            "(reference + map x (image - reference), the map's positive part scaled to [0, 1]), minus its "
            "probability for the image.",
            "higher",
            "1 forward pass per map",
            True,
            (-1.0, 1.0),
        ),
        QualityScore(
            "pointing_game",
            "Pointing game",
            "The map's maximum lies on the object's mask (TorchRay): the share of images where it does.",
            "higher",
            "free given a mask; xai evaluate only",
            False,
            (0.0, 1.0),
        ),
        QualityScore(
            "iosr",
            "IoSR",
            "Intersection over the salient region: the share of the pixels at or above half the map's range that "
            "lie on the object's mask (MindSpore XAI's localisation).",
            "higher",
            "free given a mask; xai evaluate only",
            False,
            (0.0, 1.0),
        ),
        QualityScore(
            "class_sensitivity",
            "Class sensitivity",
            "Correlation between the maps of the most and the least probable class: a map that explains a class "
            "should differ between classes.",
            "lower",
            "one more map per image; xai evaluate only",
            False,
            (-1.0, 1.0),
        ),
        QualityScore(
            "randomisation",
            "Randomisation check",
            "Rank correlation between the map and the map of the network with its top layers re-initialised "
            "(Adebayo et al., 2018): a method whose map does not change does not explain what the network learned.",
            "lower",
            "one more map per image on a copy of the network; xai evaluate only",
            False,
            (-1.0, 1.0),
        ),
    ]
}
assert set(QualityName.__args__) == {name for name, score in SCORES.items() if score.per_map}


class QualityOptions(BaseModel):
    """How the deletion, insertion and confidence-change scores run."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(
        16,
        ge=2,
        le=256,
        description="Steps from the image to the reference in each deletion and insertion curve (steps + 1 points, "
        "the ends shared by every map of an image): steps - 1 forward passes per map and curve.",
    )
    deletion_reference: Literal["mean", "blur", "constant"] = Field(
        "mean",
        description="What removed pixels become (and what confidence_change blends towards): 'mean' the image's own "
        "mean colour, 'blur' the image under a Gaussian (blur), 'constant' 0 in the network's normalised input (the "
        "data set's mean colour: a region filled with it can keep the object's outline).",
    )
    insertion_reference: Literal["mean", "blur", "constant"] = Field(
        "blur", description="What the image starts as before its pixels are revealed (as deletion_reference)."
    )
    blur: float = Field(
        0.15, gt=0, le=1, description="The blurred reference's Gaussian, in units of the image's longer side."
    )


MAX_PASSES_PER_IMAGE = 20_000  # of the faithfulness scores: ~3 min of EfficientNet-Lite0 on 2 CPU cores


def passes_per_image(scores: list[str], options: QualityOptions, maps: int) -> int:
    """Forward passes the faithfulness scores of an image with ``maps`` maps (methods x targets) cost."""
    curves = sum(name in scores for name in ("deletion_auc", "insertion_auc"))
    found = curves * (1 + maps * (options.steps - 1)) + maps * ("confidence_change" in scores)
    return found + 1 if found else 0


def score_description() -> str:
    """For the schema: each per-map score and which way is better."""
    return "; ".join(f"{s.name} ({s.better} is better)" for s in SCORES.values() if s.per_map)
