"""Explanations read from a vision transformer's attention.

- :class:`AttentionRollout` (Abnar & Zuidema, 2020): per layer the attention averaged over heads
  (``head_fusion="mean"``; or its max or min), the residual connection added as ``0.5 A + 0.5 I`` with
  rows renormalised, the layers multiplied in order (``R = A_l R``); the map is the class token's row
  of ``R`` over the patch tokens. It does not depend on the target class: every target gets the same map.
- :class:`AttentionGradient` (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability"):
  per layer ``Ā = mean_heads ReLU(∇A ⊙ A)`` with ``∇A`` the gradient of the target's score, and
  ``R = I``, ``R = R + Ā R`` layer after layer; the map is the class token's row of ``R`` over the
  patch tokens. One forward pass, and one backward pass per target from the output down to the
  first attention.

The attention matrices come from :class:`AttentionTape` (explicit softmax attention and fused
``F.scaled_dot_product_attention`` alike). The patch grid is found from the token count and the
input's size (``_tokens.py``); a network without a class token (extra tokens: 0) uses the mean of
all rows. Maps are upsampled bilinearly to the input's size, as GradCAM's are.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ._attention import AttentionTape
from ._backprop import forward_logits, per_target_gradients
from ._base import Explainer
from ._tokens import token_grid
from .gradcam import upsample

HeadFusion = Literal["mean", "max", "min"]


def attention_forward(network: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, list[Tensor]]:
    """(outputs, the attention matrices of the pass); ValueError when the pass has none."""
    with AttentionTape() as tape:
        outputs = forward_logits(network, inputs, targets)
    if not tape.maps:
        raise ValueError(
            "the network's forward pass computes no attention (a softmax over (N, heads, T, T) scores, "
            "or F.scaled_dot_product_attention)"
        )
    return outputs, tape.maps


def _patch_map(relevance: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, T, T) token relevance -> (N, h, w): the class token's row (all rows' mean without one) over
    the patch tokens."""
    tokens = relevance.shape[-1]
    grid = token_grid(tokens, size)
    if grid is None:
        raise ValueError(f"attention over {tokens} tokens holds no grid of square patches for a {size} input")
    extra, h, w = grid
    row = relevance[:, 0] if extra else relevance.mean(dim=1)
    return row[:, extra:].reshape(-1, h, w)


def _wide(tensor: Tensor) -> Tensor:
    """At least float32: products of many layers' matrices lose too much in half precision."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class AttentionRollout(Explainer):
    """``AttentionRollout(network, head_fusion="mean")(inputs, targets) -> (N, 1 or l, H, W)``."""

    first_forward_is_the_inputs = True

    def __init__(self, network: nn.Module, *, head_fusion: HeadFusion = "mean") -> None:
        super().__init__(network)
        if head_fusion not in ("mean", "max", "min"):
            raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
        self.head_fusion = head_fusion

    def explain(self, inputs: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            _, maps = attention_forward(self.network, inputs, targets)
            rollout = None
            for attention in maps:
                fused = getattr(_wide(attention), self.head_fusion)(dim=1)
                fused = fused.values if self.head_fusion != "mean" else fused
                eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
                step = 0.5 * fused + 0.5 * eye
                step = step / step.sum(dim=-1, keepdim=True)
                rollout = step if rollout is None else step @ rollout
            cams = _patch_map(rollout, tuple(inputs.shape[-2:]))  # type: ignore[arg-type]
        per_target = cams.unsqueeze(1).expand(-1, targets.shape[1], -1, -1)
        return upsample(per_target, inputs.shape[-2:]).to(inputs.dtype)


class AttentionGradient(Explainer):
    """``AttentionGradient(network)(inputs, targets) -> (N, 1 or l, H, W)``."""

    first_forward_is_the_inputs = True

    def explain(self, inputs: Tensor, targets: Tensor) -> Tensor:
        x = inputs.requires_grad_(True)  # the parameters are frozen: without it no graph is recorded
        outputs, maps = attention_forward(self.network, x, targets)
        size = tuple(inputs.shape[-2:])
        cams = []
        for gradients in per_target_gradients(outputs, maps, targets):
            relevance = None
            for attention, gradient in zip(maps, gradients, strict=True):
                weighted = _wide((gradient * attention.detach()).clamp(min=0).mean(dim=1))
                if relevance is None:
                    relevance = torch.eye(weighted.shape[-1], dtype=weighted.dtype, device=weighted.device).expand_as(
                        weighted
                    )
                relevance = relevance + weighted @ relevance
            cams.append(_patch_map(relevance, size))  # type: ignore[arg-type]
        return upsample(torch.stack(cams, dim=1), inputs.shape[-2:]).to(inputs.dtype)
