"""RISEPlus (Resisting Out-of-Distribution Samples for Perturbation-based XAI): RISE weighed by inlier scores.

``S_c = 1 / (K · p) · sum_k s_k · f_c(I ⊙ M_k) · M_k``, ``s_k = (clip(o_k, o_0, o_I) - o_0) / (o_I - o_0 + eps)``
with ``o = max_i h_i``, the OoDNet score, of the masked image (``o_k``), the all-zero image (``o_0``)
and the image itself (``o_I``), as MindSpore XAI. Masks and normalisation as :class:`RISE`.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import Tensor, nn

from ._model_state import explaining
from ._perturbation import ActivationFn, Progress, Weigh
from .ood_net import OoDNet
from .rise import RISE

EPS = torch.finfo(torch.float64).eps  # MindSpore XAI's numpy float eps: 0 / EPS = 0 when o_I == o_0


class RISEPlus(RISE):
    """``RISEPlus(ood_net, network, activation_fn, perturbation_per_eval=None, *, num_masks=6000, num_cells=10,
    keep_probability=0.5, seed=0, tolerance=None, inference_copy=True)(inputs, targets) -> (N, 1 or l, H, W)``.

    One backbone pass per masked batch gives both the class scores and the OoD score when
    ``ood_net.underlying is network`` and the network has ``classify_features(features) -> logits``
    (with ``output_features`` set, its forward returns the features ``ood_net`` reads). Otherwise — a
    different classifier under the OoDNet, or no ``classify_features`` — it falls back to two passes
    per batch, the network's and the OoDNet's, which costs about twice as much.
    """

    def __init__(
        self,
        ood_net: OoDNet,
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
        super().__init__(
            network,
            activation_fn,
            perturbation_per_eval,
            num_masks=num_masks,
            num_cells=num_cells,
            keep_probability=keep_probability,
            seed=seed,
            tolerance=tolerance,
            inference_copy=inference_copy,
        )
        if not isinstance(ood_net, OoDNet):
            raise TypeError(f"ood_net must be an OoDNet, got {type(ood_net).__name__}")
        self.ood_net = ood_net

    @property
    def shares_backbone(self) -> bool:
        return self.ood_net.underlying is self.network and callable(getattr(self.network, "classify_features", None))

    def explain(self, inputs: Tensor, targets: Tensor, progress: Progress | None = None) -> Tensor:
        with ExitStack() as stack:
            if self.ood_net.underlying is not self.network:
                stack.enter_context(explaining(self.ood_net.underlying))
            return super().explain(inputs, targets, progress)

    def weigh(self, inputs: Tensor) -> Weigh:
        """Class probabilities times inlier scores, with ``o_0`` and ``o_I`` measured on ``inputs`` first."""
        zero_score = self.ood_net.ood_score(inputs[:1].new_zeros(inputs[:1].shape))  # (1,)
        image_scores = self.ood_net.ood_score(inputs)  # (N,)

        def weigh(batch: Tensor, images: Tensor) -> Tensor:
            probabilities, ood = self.scores(batch)
            return probabilities * self.inlier_scores(ood, zero_score, image_scores[images]).unsqueeze(1)

        return weigh

    def scores(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> class probabilities (B, num_classes) and OoD scores (B,)."""
        if self.shares_backbone:
            features = self.ood_net.features(batch, self.forward_network)
            probabilities = self.activate(self.forward_network.classify_features(features), len(batch))
        else:
            features = self.ood_net.features(batch)
            probabilities = self.probabilities(batch)
        return probabilities, self.ood_net.score_features(features)

    def inlier_scores(self, ood: Tensor, low: Tensor, high: Tensor) -> Tensor:
        """(B,) OoD scores, clipped to [low, high] and scaled to [0, 1]."""
        clipped = torch.minimum(torch.maximum(ood, low), high)  # as numpy.clip, also when low > high
        return (clipped - low) / (high - low + EPS)
