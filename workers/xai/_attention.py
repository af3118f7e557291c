"""Catch the attention matrices of a forward pass, fused or not.

:class:`AttentionTape` is a ``TorchFunctionMode`` (as the rectifier tape is): it sees every torch call
of the pass. An explicit attention — a softmax over the last dimension of (N, heads, T, S) scores with
T == S — is recorded as it is. A fused one, ``F.scaled_dot_product_attention``, never materialises its
matrix; the tape computes that call explicitly instead (``softmax(q k^T * scale + mask) v``, the same
numbers up to float rounding) and records the matrix. Recorded matrices are part of the autograd
graph when the pass records one, so a method can take gradients with respect to them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

_SOFTMAXES = {F.softmax, torch.softmax, Tensor.softmax}


class AttentionTape(TorchFunctionMode):
    """``with AttentionTape() as tape: network(x)``; then ``tape.maps``: one (N, heads, T, T) per attention,
    in the order they ran."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._explicit(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in _SOFTMAXES and _is_attention(out, args, kwargs):
            self.maps.append(out)
        return out

    def _explicit(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        if dropout_p:
            raise ValueError("the network's attention drops out: explain it in eval mode (dropout_p=0)")
        if enable_gqa and key.shape[-3] != query.shape[-3]:  # grouped keys and values serve several heads
            key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
            value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        scores = query @ key.transpose(-2, -1) * scale
        if is_causal:
            allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
        if attn_mask is not None:
            scores = (
                scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
            )
        attention = scores.softmax(dim=-1)
        self.maps.append(attention)
        return attention @ value


def _is_attention(out: object, args: tuple, kwargs: dict) -> bool:
    """A softmax over the last dimension of (N, heads, T, T) scores."""
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[-1] != out.shape[-2]:
        return False
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return dim in (-1, 3)
