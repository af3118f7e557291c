"""The method catalogue: every explanation method the service offers, its parameters and defaults.

No torch here. A request's ``methods`` is a list of :data:`MethodCall`, a union discriminated by
``name``: each method has its own call model with its own parameter model, so the OpenAPI document
and generated clients show every method's parameters and defaults, and a request is validated
once, at the edge. How a worker builds each method's explainer lives in ``workers/methods.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, create_model

MAX_MASKS = 20_000  # a request's RISE masks; the library itself allows more


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    smooth: float = Field(
        0.0,
        ge=0.0,
        le=0.25,
        description="Gaussian smoothing of the map, as TorchRay's: sigma = smooth x the input's larger side "
        "(0.02 blurs a 224x224 map by 4.5 px); 0: none.",
    )


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
    tolerance: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Stop an image's masks once its map moves by less than this (relative to the map's own "
        "variation) over 250 masks; the result says how many masks each map used. Null: all num_masks.",
    )


class AttentionRolloutParams(Params):
    head_fusion: Literal["mean", "max", "min"] = Field(
        "mean", description="How a layer's heads are combined before the layers are multiplied."
    )


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    description: str
    params: type[Params] = NoParams
    uses_layer: bool = False
    needs_ood_head: bool = False
    perturbation: bool = False  # scores class probabilities of perturbed inputs; reports progress per batch
    stochastic: bool = False  # takes the request's seed
    rectifies: bool = False  # changes the backward rule of the network's rectifiers (needs its forward in Python)
    uses_attention: bool = False  # reads the attention matrices of a transformer
    cost: str = "1 forward and 1 backward pass per target"  # what it runs, per image (GET /methods)

    def describe(self) -> dict[str, Any]:
        """The method as GET /methods shows it."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "parameters": self.params.model_json_schema(),
            "defaults": {name: info.default for name, info in self.params.model_fields.items()},
            "uses_layer": self.uses_layer,
            "uses_attention": self.uses_attention,
            "cost": self.cost,
            "needs_ood_head": self.needs_ood_head,
            "perturbation": self.perturbation,
            "stochastic": self.stochastic,
        }


METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        Method("gradient", "Gradient", "Largest magnitude over channels of d score / d input."),
        Method(
            "deconvolution",
            "Deconvolution",
            "Gradient with rectifiers passing back only positive gradients.",
            rectifies=True,
        ),
        Method(
            "guided_backprop",
            "Guided Backpropagation",
            "Gradient through rectifiers only where their input and the gradient are positive.",
            rectifies=True,
        ),
        Method("input_x_gradient", "Input x Gradient", "Input times gradient, summed over channels (signed)."),
        Method(
            "integrated_gradients",
            "Integrated Gradients",
            "Gradients integrated along the path from a constant baseline, times the input difference.",
            IntegratedGradientsParams,
            cost="steps forward and backward passes per target (32 by default), batched",
        ),
        Method(
            "smoothgrad",
            "SmoothGrad",
            "Gradient magnitude averaged over noisy copies of the input.",
            SmoothGradParams,
            stochastic=True,
            cost="samples forward and backward passes per target (16 by default), batched",
        ),
        Method(
            "gradcam",
            "GradCAM",
            "ReLU of the layer's activations weighted by their mean gradient, upsampled.",
            LayerParams,
            uses_layer=True,
            cost="1 forward pass, and 1 backward pass per target from the output down to the layer only",
        ),
        Method(
            "guided_gradcam",
            "Guided GradCAM",
            "Guided Backpropagation times upsampled GradCAM.",
            LayerParams,
            uses_layer=True,
            rectifies=True,
            cost="1 forward pass, 2 backward passes per target",
        ),
        Method(
            "layer_gradient_x_activation",
            "Layer Gradient x Activation",
            "Activation times gradient at a layer, summed over the layer's channels and upsampled.",
            LayerGradientXActivationParams,
            uses_layer=True,
            cost="1 forward pass, and 1 backward pass per target down to the layer",
        ),
        Method(
            "attention_rollout",
            "Attention Rollout",
            "Vision transformers: the attention of every layer, residual added, multiplied through the layers; "
            "the class token's row over the patches (the same map for every target).",
            AttentionRolloutParams,
            uses_attention=True,
            cost="1 forward pass, no backward; every target gets the same map",
        ),
        Method(
            "attention_gradient",
            "Gradient-weighted Attention",
            "Vision transformers: each layer's attention weighted by the target's gradient (positive part, "
            "mean over heads), accumulated through the layers as relevance (Chefer et al., 2021).",
            uses_attention=True,
        ),
        Method(
            "occlusion",
            "Occlusion",
            "Drop of the target's probability when a sliding window is occluded, averaged per pixel.",
            OcclusionParams,
            perturbation=True,
            cost="1 forward pass per window position ((H/stride) x (W/stride); 1,024 at the default), "
            "all targets at once",
        ),
        Method(
            "rise",
            "RISE",
            "Probabilities under random masks, averaged with the masks as weights.",
            RISEParams,
            perturbation=True,
            stochastic=True,
            cost="num_masks forward passes (6,000 by default: tens of seconds on a CPU for a 224x224 network; "
            "use tolerance or fewer masks), all targets at once",
        ),
        Method(
            "rise_plus",
            "RISEPlus",
            "RISE with each mask weighted by how in-distribution the masked image is.",
            RISEParams,
            needs_ood_head=True,
            perturbation=True,
            stochastic=True,
            cost="num_masks forward passes and the OoD head on each masked image, all targets at once",
        ),
    ]
}


class MethodCallBase(BaseModel):
    """One method of a request: its ``name`` and its ``params``."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: Params


def _call_model(method: Method) -> type[MethodCallBase]:
    title = method.title.replace(" ", "").replace("Backpropagation", "Backprop").replace("x", "X")
    return create_model(
        f"{title}Call",
        __base__=MethodCallBase,
        __doc__=f"{method.title}: {method.description}",
        name=(Literal[method.name], Field(description="The method id.")),  # type: ignore[valid-type]
        params=(method.params, Field(default_factory=method.params, description="The method's parameters.")),
    )


CALLS: dict[str, type[MethodCallBase]] = {name: _call_model(method) for name, method in METHODS.items()}
MethodCall = Annotated[Union[tuple(CALLS.values())], Field(discriminator="name")]  # noqa: UP007


def call(name: str, **params: Any) -> MethodCallBase:
    """A validated call of method ``name`` (for code and tests: ``call("rise", num_masks=500)``)."""
    return CALLS[name](name=name, params=params)
