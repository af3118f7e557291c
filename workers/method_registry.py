"""Every explanation method the service offers, in one registry. No torch here.

A method is one :class:`MethodSpec`: its id, what it does, the JSON-schema'd parameters a client
may pass, and how those become the explainer's constructor arguments. The API validates requests
and lists methods from it; the worker builds explainers from it. Adding a method is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

MAX_MASKS = 20_000  # a request's RISE masks; the library itself allows more


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoParams(Params):
    pass


class LayerParams(Params):
    layer: str | None = Field(None, description="Dotted module name; default: the model's GradCAM layer.")


class LayerGradientXActivationParams(LayerParams):
    multiply_by_inputs: bool = True
    attribute_to_layer_input: bool = False


class IntegratedGradientsParams(Params):
    steps: int = Field(32, ge=2, le=256)
    baseline: float = Field(0.0, ge=-1e3, le=1e3, description="Constant baseline, in the network's input units.")
    method: Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"] = (
        "gausslegendre"
    )


class SmoothGradParams(Params):
    noise_level: float = Field(0.15, ge=0.0, le=1.0, description="Noise sd as a fraction of the input's range.")
    samples: int = Field(16, ge=1, le=256)


class OcclusionParams(Params):
    window: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="(height, width); default: input size / 32 per side."
    )
    strides: tuple[PositiveInt, PositiveInt] | None = Field(None, description="(height, width); default: the window.")
    reference: float = Field(0.0, ge=-1e3, le=1e3, description="Value of occluded pixels, in input units.")


class RISEParams(Params):
    num_masks: int = Field(6000, ge=1, le=MAX_MASKS)
    num_cells: int = Field(10, ge=2, le=64)
    keep_probability: float = Field(0.5, gt=0.0, lt=1.0)


Kwargs = Callable[[Any, str, int | None], dict[str, Any]]  # (params, default layer, seed) -> kwargs


def _no_kwargs(params: Any, layer: str, seed: int | None) -> dict[str, Any]:
    return {}


def _layer(params: Any, layer: str, seed: int | None) -> dict[str, Any]:
    return {"layer": layer if params.layer is None else params.layer}


def _rise_kwargs(params: Any, layer: str, seed: int | None) -> dict[str, Any]:
    """RISE and RISEPlus; without a request seed, seed 0 (the same masks every time)."""
    return {
        "num_masks": params.num_masks,
        "num_cells": params.num_cells,
        "keep_probability": params.keep_probability,
        "seed": seed or 0,
    }


@dataclass(frozen=True)
class MethodSpec:
    name: str
    title: str
    description: str
    explainer: str  # "module:Class"
    params: type[Params] = NoParams
    kwargs: Kwargs = _no_kwargs
    uses_layer: bool = False
    needs_ood_head: bool = False
    perturbation: bool = False  # built with activation_fn (softmax), reports progress per batch
    stochastic: bool = False  # takes the request's seed
    layer_shaped: bool = False  # returns the layer's (N, L, K, h, w): summed over K and upsampled for a map
    tags: tuple[str, ...] = field(default=())


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec(
            "gradient", "Gradient", "Largest magnitude over channels of d score / d input.", "workers.xai:Gradient"
        ),
        MethodSpec(
            "deconvolution",
            "Deconvolution",
            "Gradient with rectifiers passing back only positive gradients.",
            "workers.xai:Deconvolution",
        ),
        MethodSpec(
            "guided_backprop",
            "Guided Backpropagation",
            "Gradient through rectifiers only where their input and the gradient are positive.",
            "workers.xai:GuidedBackprop",
        ),
        MethodSpec(
            "input_x_gradient",
            "Input x Gradient",
            "Input times gradient, summed over channels (signed).",
            "workers.xai:InputXGradient",
        ),
        MethodSpec(
            "integrated_gradients",
            "Integrated Gradients",
            "Gradients integrated along the path from a constant baseline, times the input difference.",
            "workers.xai:IntegratedGradients",
            IntegratedGradientsParams,
            lambda p, layer, seed: {
                "steps": p.steps,
                "baseline": p.baseline,
                "method": p.method,
                "internal_batch_size": 32,
            },
        ),
        MethodSpec(
            "smoothgrad",
            "SmoothGrad",
            "Gradient magnitude averaged over noisy copies of the input.",
            "workers.xai:SmoothGrad",
            SmoothGradParams,
            lambda p, layer, seed: {
                "noise_level": p.noise_level,
                "samples": p.samples,
                "seed": seed,
                "internal_batch_size": 32,
            },
            stochastic=True,
        ),
        MethodSpec(
            "gradcam",
            "GradCAM",
            "ReLU of the layer's activations weighted by their mean gradient, upsampled.",
            "workers.xai:GradCAM",
            LayerParams,
            _layer,
            uses_layer=True,
        ),
        MethodSpec(
            "guided_gradcam",
            "Guided GradCAM",
            "Guided Backpropagation times upsampled GradCAM.",
            "workers.xai:GuidedGradCAM",
            LayerParams,
            _layer,
            uses_layer=True,
        ),
        MethodSpec(
            "layer_gradient_x_activation",
            "Layer Gradient x Activation",
            "Activation times gradient at a layer, summed over the layer's channels and upsampled.",
            "workers.xai:LayerGradientXActivation",
            LayerGradientXActivationParams,
            lambda p, layer, seed: {
                **_layer(p, layer, seed),
                "multiply_by_inputs": p.multiply_by_inputs,
                "attribute_to_layer_input": p.attribute_to_layer_input,
            },
            uses_layer=True,
            layer_shaped=True,
        ),
        MethodSpec(
            "occlusion",
            "Occlusion",
            "Drop of the target's probability when a sliding window is occluded, averaged per pixel.",
            "workers.xai:Occlusion",
            OcclusionParams,
            lambda p, layer, seed: {"window": p.window, "strides": p.strides, "reference": p.reference},
            perturbation=True,
        ),
        MethodSpec(
            "rise",
            "RISE",
            "Probabilities under random masks, averaged with the masks as weights.",
            "workers.xai:RISE",
            RISEParams,
            _rise_kwargs,
            perturbation=True,
            stochastic=True,
        ),
        MethodSpec(
            "rise_plus",
            "RISEPlus",
            "RISE with each mask weighted by how in-distribution the masked image is.",
            "workers.xai:RISEPlus",
            RISEParams,
            _rise_kwargs,
            needs_ood_head=True,
            perturbation=True,
            stochastic=True,
        ),
    ]
}


def describe(spec: MethodSpec) -> dict[str, Any]:
    """The method as GET /methods shows it."""
    schema = spec.params.model_json_schema()
    defaults = {name: info.default for name, info in spec.params.model_fields.items()}
    return {
        "name": spec.name,
        "title": spec.title,
        "description": spec.description,
        "parameters": schema,
        "defaults": defaults,
        "uses_layer": spec.uses_layer,
        "needs_ood_head": spec.needs_ood_head,
        "perturbation": spec.perturbation,
        "stochastic": spec.stochastic,
    }
