"""Argument checks shared by every explainer.

Explainers accept the input and target forms of the MindSpore XAI contract and nothing looser:
``inputs`` a 4-D floating tensor (N, C, H, W); ``targets`` an int, a 0-D tensor, a 1-D tensor or
list of N ints, or an (N, l) tensor of l targets per image. Everything is turned into one (N, L)
long tensor here, so the kernels see a single form.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

TargetsLike = int | Tensor | Sequence[int]


def check_network(network: object, name: str = "network") -> nn.Module:
    if not isinstance(network, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(network).__name__}")
    return network


def check_inputs(inputs: object) -> Tensor:
    """inputs: (N, C, H, W) floating tensor with N, H, W > 0."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be a 4-D tensor (N, C, H, W), got shape {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")
    if 0 in inputs.shape:
        raise ValueError(f"inputs must not be empty, got shape {tuple(inputs.shape)}")
    return inputs


def normalise_targets(targets: object, batch_size: int, device: torch.device) -> Tensor:
    """Return targets as an (N, L) long tensor on ``device``.

    An int or a 0-D tensor applies to every image; a 1-D tensor or list has one target per image;
    an (N, l) tensor has l targets per image.
    """
    if isinstance(targets, bool):
        raise TypeError("targets must be an int, a list of ints or an integer tensor, got bool")
    if isinstance(targets, int):
        out = torch.full((batch_size, 1), targets, dtype=torch.long)
    elif isinstance(targets, Tensor):
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"targets must be an integer tensor, got dtype {targets.dtype}")
        if targets.dim() == 0:
            out = targets.reshape(1, 1).expand(batch_size, 1)
        elif targets.dim() == 1:
            if len(targets) != batch_size:
                raise ValueError(
                    f"targets as a 1-D tensor must have one entry per input (length {batch_size}), "
                    f"got length {len(targets)}"
                )
            out = targets.reshape(batch_size, 1)
        elif targets.dim() == 2:
            if targets.shape[0] != batch_size or targets.shape[1] == 0:
                raise ValueError(
                    f"targets as a 2-D tensor must have shape (N={batch_size}, l>=1), got {tuple(targets.shape)}"
                )
            out = targets
        else:
            raise ValueError(f"targets must be 0-D, 1-D or 2-D, got {targets.dim()}-D")
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
            raise TypeError("targets as a list must hold only ints")
        if len(targets) != batch_size:
            raise ValueError(
                f"targets as a list must have one entry per input (length {batch_size}), got length {len(targets)}"
            )
        out = torch.tensor(list(targets), dtype=torch.long).reshape(batch_size, 1)
    else:
        raise TypeError(f"targets must be an int, a list of ints or an integer tensor, got {type(targets).__name__}")
    out = out.to(device=device, dtype=torch.long)
    if bool((out < 0).any()):
        raise ValueError(f"targets must be non-negative class indices, got {out.min().item()}")
    return out


def check_targets_in_range(targets: Tensor, num_classes: int) -> None:
    """Called once the network's output width is known."""
    top = int(targets.max())
    if top >= num_classes:
        raise ValueError(f"targets must be < {num_classes} (the network's number of outputs), got {top}")


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(value: object, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """A real number, optionally within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be within [{low}, {high}], got {value}")
    return value
