"""Gradient-family explainers against Captum and against the bare forward+backward they need.

    python -m bench.gradient_family [--repeats 10] [--quick]

Each row times, in one run and on the same input: ours, Captum's equivalent (producing the same
map), and the bare forward+backward at the same batch size. Ratios: ``ours/bare`` (what the method
costs beyond the passes it cannot avoid) and ``captum/ours`` (> 1: we are faster). The network's
parameters are frozen and in eval mode for all three, as our explainers do it themselves.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from captum.attr import (
    Deconvolution as CaptumDeconvolution,
)
from captum.attr import (
    GuidedBackprop as CaptumGuidedBackprop,
)
from captum.attr import (
    GuidedGradCam,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from captum.attr import (
    InputXGradient as CaptumInputXGradient,
)
from captum.attr import (
    IntegratedGradients as CaptumIntegratedGradients,
)
from captum.attr import (
    LayerGradientXActivation as CaptumLayerGradientXActivation,
)
from torch import nn

from bench.timing import allocator_setting, forward_backward, frozen, machine, median_ms
from core.methods import call
from models.lenet5 import LeNet5
from models.registry import ModelRegistry
from workers.methods import INTERNAL_BATCH, Context, build_explainer
from workers.xai import IntegratedGradients, SmoothGrad

STEPS = 16  # integrated gradients' steps and smoothgrad's samples, all in one internal batch
Case = tuple[str, Callable[[], object], Callable[[], object], Callable[[], object]]


def our_run(
    context: Context, x: torch.Tensor, targets: int | torch.Tensor, name: str, **params: Any
) -> Callable[[], object]:
    """Our explainer of method ``name``, built as the service builds it (``workers/methods.py``), run on ``x``.

    The call is validated once, outside the timed run; the explainer is built in it, as Captum's is.
    """
    method = call(name, **params)
    return lambda: build_explainer(method, context)(x, targets)


def cases(network: nn.Module, layer: str, x: torch.Tensor, target: int) -> list[Case]:
    module = network.get_submodule(layer)
    size = x.shape[-2:]
    n = len(x)
    ours = partial(our_run, Context(network, layer, seed=0), x, target)
    bare = forward_backward(network, x, target)
    memory_format = (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )
    bare_steps = forward_backward(network, x.repeat(STEPS, 1, 1, 1).contiguous(memory_format=memory_format), target)
    # All N x STEPS rows in one pass, as in bare_steps: through the adapter up to its INTERNAL_BATCH rows (batch 1),
    # built directly past that (LeNet5, batch 16), where the adapter would split them into passes of INTERNAL_BATCH.
    one_pass = n * STEPS <= INTERNAL_BATCH
    return [
        (
            "gradient",
            ours("gradient"),
            lambda: Saliency(network).attribute(x, target=target).amax(1),
            bare,
        ),
        (
            "deconvolution",
            ours("deconvolution"),
            lambda: CaptumDeconvolution(network).attribute(x, target=target).abs().amax(1),
            bare,
        ),
        (
            "guided_backprop",
            ours("guided_backprop"),
            lambda: CaptumGuidedBackprop(network).attribute(x, target=target).abs().amax(1),
            bare,
        ),
        (
            "input_x_gradient",
            ours("input_x_gradient"),
            lambda: CaptumInputXGradient(network).attribute(x, target=target).sum(1),
            bare,
        ),
        (
            "gradcam",
            ours("gradcam"),
            lambda: LayerAttribution.interpolate(
                LayerGradCam(network, module).attribute(x, target=target, relu_attributions=True), size, "bilinear"
            ),
            bare,
        ),
        (
            "guided_gradcam",
            ours("guided_gradcam"),
            lambda: (
                GuidedGradCam(network, module).attribute(x, target=target, interpolate_mode="bilinear").abs().amax(1)
            ),
            bare,
        ),
        (
            "layer_gradient_x_activation",
            ours("layer_gradient_x_activation"),
            lambda: CaptumLayerGradientXActivation(network, module).attribute(x, target=target),
            bare,
        ),
        (
            f"integrated_gradients ({STEPS} steps)",
            ours("integrated_gradients", steps=STEPS)
            if one_pass
            else lambda: IntegratedGradients(network, steps=STEPS)(x, target),
            lambda: CaptumIntegratedGradients(network).attribute(x, target=target, n_steps=STEPS).sum(1),
            bare_steps,
        ),
        (
            f"smoothgrad ({STEPS} samples)",
            ours("smoothgrad", samples=STEPS)
            if one_pass
            else lambda: SmoothGrad(network, samples=STEPS, seed=0)(x, target),
            lambda: (
                NoiseTunnel(Saliency(network))
                .attribute(
                    x,
                    nt_type="smoothgrad",
                    nt_samples=STEPS,
                    nt_samples_batch_size=STEPS * n,
                    stdevs=0.3,
                    target=target,
                )
                .amax(1)
            ),
            bare_steps,
        ),
    ]


def top_k_cases(network: nn.Module, layer: str, x: torch.Tensor, classes: list[int]) -> list[Case]:
    """k targets of one image: ours in one call, Captum in k calls, bare = k forward+backward."""
    module = network.get_submodule(layer)
    targets = torch.tensor([classes])
    ours = partial(our_run, Context(network, layer), x, targets)
    bares = [forward_backward(network, x, c) for c in classes]
    return [
        (
            f"gradient top-{len(classes)}",
            ours("gradient"),
            lambda: [Saliency(network).attribute(x, target=c).amax(1) for c in classes],
            lambda: [run() for run in bares],
        ),
        (
            f"gradcam top-{len(classes)}",
            ours("gradcam"),
            lambda: [
                LayerAttribution.interpolate(
                    LayerGradCam(network, module).attribute(x, target=c, relu_attributions=True),
                    x.shape[-2:],
                    "bilinear",
                )
                for c in classes
            ],
            lambda: [run() for run in bares],
        ),
    ]


def report(title: str, rows: list[Case], repeats: int) -> None:
    print(f"\n### {title}\n")
    print("| method | ours ms | Captum ms | bare fwd+bwd ms | ours / bare | Captum / ours |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, ours, captum, bare in rows:
        t_bare = median_ms(bare, repeats)
        t_ours = median_ms(ours, repeats)
        t_captum = median_ms(captum, repeats)
        ratios = f"{t_ours / t_bare:.2f} | {t_captum / t_ours:.2f}"
        print(f"| {name} | {t_ours:.1f} | {t_captum:.1f} | {t_bare:.1f} | {ratios} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="EfficientNet-Lite0 only, channels_last only")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# gradient family — {machine()}; {allocator_setting()}; median of {args.repeats}")

    lenet = frozen(LeNet5())
    registry = ModelRegistry()
    efficientnet = registry.network("efficientnet-lite0")
    formats = [torch.channels_last] if args.quick else [torch.contiguous_format, torch.channels_last]
    for memory_format in formats:
        fmt = "channels_last" if memory_format is torch.channels_last else "contiguous"
        if not args.quick:
            for batch in (1, 16):
                x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=memory_format)
                report(f"LeNet5, 32x32, batch {batch}, {fmt}", cases(lenet, "conv2", x, 3), args.repeats)
        x = torch.randn(1, 3, 224, 224).contiguous(memory_format=memory_format)
        layer = registry.manifest("efficientnet-lite0").gradcam_layer
        report(f"EfficientNet-Lite0, 224x224, batch 1, {fmt}", cases(efficientnet, layer, x, 285), args.repeats)
        report(
            f"EfficientNet-Lite0, top-5 of one image, {fmt}",
            top_k_cases(efficientnet, layer, x, [285, 281, 282, 287, 728]),
            args.repeats,
        )


if __name__ == "__main__":
    main()
