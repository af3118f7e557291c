"""Occlusion (Zeiler & Fergus, 2014): slide a window of reference values over the image.

``S_t(p) = mean over the windows w covering pixel p of (f_t(x) - f_t(x with w set to the reference))``,
``f = activation_fn(network)`` — Captum's definition. The window spans every channel. Windows start every
``strides`` pixels; the last one along a side may hang over the edge and is cut there, so every
pixel is covered (as in Captum).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._perturbation import ActivationFn, PerturbationExplainer, Progress
from ._validation import check_positive_int

Pair = int | tuple[int, int]


def default_window(side: int) -> tuple[int, int]:
    """(window, stride) along a side, MindSpore XAI's rule: 32 windows per side, or 3 pixels every pixel."""
    if side > 32:
        return side // 32, side // 32
    return min(3, side), 1


class Occlusion(PerturbationExplainer):
    """``Occlusion(network, activation_fn, perturbation_per_eval=None, *, window=None, strides=None,
    reference=0.0, absolute=False, inference_copy=True)(inputs, targets) -> (N, 1 or l, H, W)``.

    ``window``/``strides``: an int or (h, w); ``strides`` defaults to the window (tiles). Without either,
    :func:`default_window` per side: 7 x 7 tiles at 224 x 224 (1,024 windows), 3 x 3 windows with stride 1
    at 32 x 32 (900 windows). ``reference``: a number, a (C,) tensor (one value per channel, e.g. the
    dataset mean) or a tensor broadcastable to the inputs. The map is signed (> 0: occluding lowers the
    target's probability); ``absolute=True`` returns its magnitude.
    """

    def __init__(
        self,
        network: nn.Module,
        activation_fn: ActivationFn,
        perturbation_per_eval: int | None = None,
        *,
        window: Pair | None = None,
        strides: Pair | None = None,
        reference: float | Tensor = 0.0,
        absolute: bool = False,
        inference_copy: bool = True,
    ) -> None:
        super().__init__(network, activation_fn, perturbation_per_eval, inference_copy=inference_copy)
        self.window = None if window is None else _pair(window, "window")
        self.strides = self.window if strides is None else _pair(strides, "strides")
        if isinstance(reference, bool) or not isinstance(reference, int | float | Tensor):
            raise TypeError(f"reference must be a number or a tensor, got {type(reference).__name__}")
        if not bool(torch.isfinite(torch.as_tensor(reference)).all()):
            raise ValueError("reference must be finite")
        self.reference = reference
        if not isinstance(absolute, bool):
            raise TypeError(f"absolute must be a bool, got {type(absolute).__name__}")
        self.absolute = absolute

    def explain(self, inputs: Tensor, targets: Tensor, progress: Progress | None = None) -> Tensor:
        rows, columns = (self._spans(inputs, axis) for axis in (0, 1))  # (n_h, H), (n_w, W) window indicators
        reference = self._reference_for(inputs)
        baseline = self.probabilities(inputs)  # (N, num_classes), unoccluded

        def keep_and_credit(index: Tensor) -> tuple[Tensor, Tensor]:
            window = rows[index // len(columns)].unsqueeze(2) * columns[index % len(columns)].unsqueeze(1)
            return 1 - window, window

        total = self.perturb(
            inputs,
            targets,
            count=len(rows) * len(columns),
            masks=keep_and_credit,
            weigh=lambda batch, images: baseline[images] - self.probabilities(batch),
            reference=reference,
            progress=progress,
        )
        maps = total / (rows.sum(0).unsqueeze(1) * columns.sum(0).unsqueeze(0))  # mean over covering windows
        return maps.abs() if self.absolute else maps

    def _spans(self, inputs: Tensor, axis: int) -> Tensor:
        """(windows, side) float: 1 where window i covers the pixel, along height (0) or width (1)."""
        side = inputs.shape[2 + axis]
        window, stride = default_window(side) if self.window is None else (self.window[axis], self.strides[axis])
        if window > side:
            raise ValueError(f"window {self.window} is larger than the image ({inputs.shape[2]}, {inputs.shape[3]})")
        if stride > window and window < side:
            raise ValueError(f"strides {self.strides} must not exceed the window {self.window}: pixels would be missed")
        starts = torch.arange(math.ceil((side - window) / stride) + 1, device=inputs.device).unsqueeze(1) * stride
        pixels = torch.arange(side, device=inputs.device)
        return ((pixels >= starts) & (pixels < starts + window)).to(inputs.dtype)

    def _reference_for(self, inputs: Tensor) -> Tensor | None:
        """None for 0, else (1 or N, C or 1, H or 1, W or 1)."""
        if not isinstance(self.reference, Tensor) and self.reference == 0:
            return None
        reference = torch.as_tensor(self.reference, device=inputs.device, dtype=inputs.dtype)
        if reference.dim() == 1 and len(reference) == inputs.shape[1]:
            reference = reference.view(-1, 1, 1)
        try:
            fits = reference.dim() <= 4 and torch.broadcast_shapes(reference.shape, inputs.shape) == inputs.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"reference of shape {tuple(reference.shape)} does not broadcast to inputs {tuple(inputs.shape)}"
            )
        return reference.reshape((1,) * (4 - reference.dim()) + tuple(reference.shape))


def _pair(value: object, name: str) -> tuple[int, int]:
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {value}")
        return check_positive_int(value[0], name), check_positive_int(value[1], name)
    size = check_positive_int(value, name)
    return size, size
