"""Backward rules for rectifying activations: plain, Deconvolution, Guided Backpropagation.

The forward pass runs under :class:`RectifierTape`, a thread-local ``TorchFunctionMode`` that
swaps every rectifier call for :class:`_Rectifier`: ``nn.ReLU``/``nn.ReLU6``/``nn.Hardtanh``
modules (they call ``F.relu``/``F.hardtanh``), the functional forms ``F.relu``, ``torch.relu``,
``Tensor.relu``, ``F.relu6``, ``F.hardtanh`` and their in-place variants. Every call is caught,
so a module called several times in one pass (EfficientNet-Lite's ``_swish``) gets the rule at
each call, which module hooks cannot do.

The rule is read from the tape when the backward pass runs, not when the graph is recorded, so
one recorded forward pass can be differentiated under different rules (GuidedGradCAM takes the
plain gradient at its layer and the guided one at the input from the same forward pass).

For an activation clamped to ``[lower, upper]`` (``upper`` is ``inf`` for ReLU), with ``g`` the
incoming gradient and ``x`` the forward input:

- ``plain``: ``g * [lower < x < upper]`` (autograd's own gradient);
- ``guided``: ``max(g, 0) * [lower < x < upper]``;
- ``deconv``: ``max(g, 0) * [x < upper]`` — the rectification's backward is replaced by a ReLU
  on the gradient; an upper clamp (ReLU6) still stops the gradient where the unit saturated.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

Rule = Literal["plain", "guided", "deconv"]
RULES: tuple[Rule, ...] = ("plain", "guided", "deconv")


class _Rectifier(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, lower: float, upper: float, tape: RectifierTape) -> Tensor:
        y = x.clamp(min=lower) if math.isinf(upper) else x.clamp(lower, upper)
        ctx.tape, ctx.lower, ctx.upper = tape, lower, upper
        # The output determines the linear region (lower < x < upper iff lower < y < upper) and,
        # unlike the input, is not overwritten when the call was in place.
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        # aten's own backward kernels do the masking in one pass; masking on the output is the
        # same as on the input (lower < x < upper iff lower < y < upper).
        (y,) = ctx.saved_tensors
        rule = ctx.tape.rule
        lower = -math.inf if rule == "deconv" else ctx.lower
        if math.isinf(ctx.upper):
            if math.isinf(lower):  # deconvolution through a ReLU: the input plays no part
                return torch.relu(grad), None, None, None
            grad_in = torch.ops.aten.threshold_backward(grad, y, lower)
        else:
            grad_in = torch.ops.aten.hardtanh_backward(grad, y, lower, ctx.upper)
        if rule != "plain":
            grad_in.clamp_(min=0)  # grad_in is ours to overwrite; grad is not
        return grad_in, None, None, None


_RELU = {"min_val": 0.0, "max_val": math.inf, "inplace": False}
_RELU6 = {"min_val": 0.0, "max_val": 6.0, "inplace": False}
_HARDTANH = {"min_val": -1.0, "max_val": 1.0, "inplace": False}

# rectifier -> (names of its arguments after the input, their defaults)
_SIGNATURES: dict[Any, tuple[tuple[str, ...], dict[str, Any]]] = {
    F.relu: (("inplace",), _RELU),
    torch.relu: ((), _RELU),
    torch.Tensor.relu: ((), _RELU),
    torch.relu_: ((), {**_RELU, "inplace": True}),
    torch.Tensor.relu_: ((), {**_RELU, "inplace": True}),
    F.relu6: (("inplace",), _RELU6),
    F.hardtanh: (("min_val", "max_val", "inplace"), _HARDTANH),
    F.hardtanh_: (("min_val", "max_val"), {**_HARDTANH, "inplace": True}),
}


def _bounds(func: Any, args: tuple, kwargs: dict) -> tuple[float, float, bool]:
    """(lower, upper, inplace) of a call to one of the rectifiers of ``_SIGNATURES``."""
    names, defaults = _SIGNATURES[func]
    values = {**defaults, **dict(zip(names, args[1:], strict=False)), **kwargs}
    return float(values["min_val"]), float(values["max_val"]), bool(values["inplace"])


def _records_grad(x: object) -> bool:
    return isinstance(x, Tensor) and x.requires_grad and torch.is_grad_enabled()


class RectifierTape(TorchFunctionMode):
    """Record rectifiers with switchable backward rules during a forward pass.

    ``calls`` counts the rectifier calls caught, so a method that needs them can refuse a network
    that has none instead of silently returning the plain gradient.
    """

    def __init__(self, rule: Rule = "plain") -> None:
        super().__init__()
        self.rule: Rule = rule
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func not in _SIGNATURES or not _records_grad(args[0]):  # every op of the pass comes here
            return func(*args, **kwargs)
        lower, upper, inplace = _bounds(func, args, kwargs)
        x = args[0]
        self.calls += 1
        y = _Rectifier.apply(x, lower, upper, self)
        if inplace:
            # Callers of an in-place form may ignore the return value; keep x aliased to the result.
            return x.copy_(y)
        return y
