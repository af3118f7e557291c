"""How the worker makes each method of the catalogue (``core/methods.py``) into an explainer.

One adapter per method: what it builds from a validated call and the model's context, and what its
output needs to become (N, L, H, W) maps at the input's size. The job runner, the invariant test
suites, the benchmarks and the photo command all build explainers here, so the list of methods is
written once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from core.methods import METHODS, MethodCallBase
from workers.xai import (
    RISE,
    AttentionGradient,
    AttentionRollout,
    Deconvolution,
    Explainer,
    GradCAM,
    Gradient,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    LayerGradientXActivation,
    Occlusion,
    OoDNet,
    RISEPlus,
    SmoothGrad,
    TopTargets,
    smooth_maps,
    tokens_to_grid,
)

INTERNAL_BATCH = 32  # inputs per pass for the path and noise methods


@dataclass(frozen=True)
class Context:
    """What an explainer is built from besides the call: the model and the request around it."""

    network: nn.Module
    default_layer: str
    seed: int | None = None
    ood_net: OoDNet | None = None
    probabilities: str = "softmax"  # the manifest's: softmax, or sigmoid for multi-label models
    ood_features: str | None = None  # the network's module whose output the OoD head reads (ModelHost)


Build = Callable[[Any, Context], Explainer]


@dataclass(frozen=True)
class Adapter:
    build: Build
    layer_shaped: bool = False  # returns the layer's (N, L, K, h, w): summed over K and upsampled for a map


def _layer(params: Any, context: Context) -> str:
    return context.default_layer if params.layer is None else params.layer


def probabilities(kind: str) -> nn.Module:
    """Scores -> class probabilities, as the model's manifest says (``softmax`` or ``sigmoid``)."""
    return nn.Sigmoid() if kind == "sigmoid" else nn.Softmax(dim=1)


def _rise(params: Any, context: Context) -> dict[str, Any]:
    """RISE and RISEPlus; without a request seed, seed 0 (the same masks every time)."""
    return {
        "num_masks": params.num_masks,
        "num_cells": params.num_cells,
        "keep_probability": params.keep_probability,
        "seed": context.seed or 0,
        "tolerance": params.tolerance,
    }


def _rise_plus(params: Any, context: Context) -> Explainer:
    if context.ood_net is None:
        raise ValueError("rise_plus needs the model's OoD head, and the model has none")
    return RISEPlus(context.ood_net, context.network, probabilities(context.probabilities), **_rise(params, context))


ADAPTERS: dict[str, Adapter] = {
    "gradient": Adapter(lambda p, c: Gradient(c.network)),
    "deconvolution": Adapter(lambda p, c: Deconvolution(c.network)),
    "guided_backprop": Adapter(lambda p, c: GuidedBackprop(c.network)),
    "input_x_gradient": Adapter(lambda p, c: InputXGradient(c.network)),
    "integrated_gradients": Adapter(
        lambda p, c: IntegratedGradients(
            c.network, steps=p.steps, baseline=p.baseline, method=p.method, internal_batch_size=INTERNAL_BATCH
        )
    ),
    "smoothgrad": Adapter(
        lambda p, c: SmoothGrad(
            c.network, noise_level=p.noise_level, samples=p.samples, seed=c.seed, internal_batch_size=INTERNAL_BATCH
        )
    ),
    "gradcam": Adapter(lambda p, c: GradCAM(c.network, layer=_layer(p, c))),
    "guided_gradcam": Adapter(lambda p, c: GuidedGradCAM(c.network, layer=_layer(p, c))),
    "layer_gradient_x_activation": Adapter(
        lambda p, c: LayerGradientXActivation(
            c.network,
            layer=_layer(p, c),
            multiply_by_inputs=p.multiply_by_inputs,
            attribute_to_layer_input=p.attribute_to_layer_input,
        ),
        layer_shaped=True,
    ),
    "attention_rollout": Adapter(lambda p, c: AttentionRollout(c.network, head_fusion=p.head_fusion)),
    "attention_gradient": Adapter(lambda p, c: AttentionGradient(c.network)),
    "occlusion": Adapter(
        lambda p, c: Occlusion(
            c.network, probabilities(c.probabilities), window=p.window, strides=p.strides, reference=p.reference
        )
    ),
    "rise": Adapter(lambda p, c: RISE(c.network, probabilities(c.probabilities), **_rise(p, c))),
    "rise_plus": Adapter(_rise_plus),
}
assert ADAPTERS.keys() == METHODS.keys(), "every method of the catalogue has an adapter, and no other"


def build_explainer(call: MethodCallBase, context: Context) -> Explainer:
    """The explainer of one validated method call. TypeError/ValueError: the call does not fit the model."""
    return ADAPTERS[call.name].build(call.params, context)


def explain(
    call: MethodCallBase,
    explainer: Explainer,
    inputs: Tensor,
    targets: Tensor | TopTargets,
    progress: Callable[[float], None],
) -> Tensor:
    """(N, L, H, W) maps at the input's size for (N, L) targets (or the top L classes, TopTargets(L)),
    smoothed as the call's ``smooth`` says; ``progress`` for the perturbation methods."""
    if isinstance(targets, Tensor):
        targets = targets.reshape(len(inputs), -1)  # (N,) is one target per image: (N, 1)
    kwargs = {"progress": progress} if METHODS[call.name].perturbation else {}
    maps = explainer(inputs, targets, **kwargs)
    if ADAPTERS[call.name].layer_shaped:
        if maps.dim() == 4:  # (N, L, T, C) of a token layer: its patch grid, (N, L, C, h, w)
            maps = tokens_to_grid(maps, tuple(inputs.shape[-2:]))
        maps = F.interpolate(maps.sum(dim=2), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
    return smooth_maps(maps, call.params.smooth)


def all_calls(**params: dict[str, Any]) -> list[MethodCallBase]:
    """A call of every method, with the parameters given per method name (tests, benchmarks, commands)."""
    from core.methods import call

    return [call(name, **params.get(name, {})) for name in METHODS]


__all__ = ["ADAPTERS", "Adapter", "Context", "all_calls", "build_explainer", "explain"]
