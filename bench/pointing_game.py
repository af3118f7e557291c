"""Pointing game on lenet5-shapes: does each method's map peak on the labelled object?

    python -m bench.pointing_game [--count 1000]

TorchRay's definition: a hit when the map's maximum lies on the object's mask grown by a
tolerance (15 px at 224x224 in TorchRay; 1 px here at 32x32). Targets are the true labels, over
held-out images (seed 3, never trained on). Two baselines for scale: the image centre, and the
centre of mass of a uniform random map's maximum (chance).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.registry import ModelRegistry
from models.shapes import generate
from models.train_shapes import TEST_SEED
from workers.xai import (
    RISE,
    Deconvolution,
    GradCAM,
    Gradient,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    RISEPlus,
    SmoothGrad,
)

TOLERANCE = 1  # pixels


def grown(masks: torch.Tensor, tolerance: int) -> torch.Tensor:
    """(N, H, W) bool masks dilated by a disk of radius ``tolerance``."""
    offsets = torch.arange(-tolerance, tolerance + 1)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= tolerance**2).float()[None, None]
    return F.conv2d(masks[:, None].float(), disk, padding=tolerance)[:, 0] > 0


def hits(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """maps (N, H, W) -> (N,) bool: the maximum falls on the grown mask."""
    flat = maps.flatten(1).argmax(dim=1)
    return grown(masks, TOLERANCE).flatten(1).gather(1, flat[:, None])[:, 0]


def methods(network: nn.Module, layer: str) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    return {
        "gradient": Gradient(network),
        "deconvolution": Deconvolution(network),
        "guided_backprop": GuidedBackprop(network),
        "input_x_gradient": InputXGradient(network),
        "integrated_gradients": IntegratedGradients(network, steps=32),
        "smoothgrad": SmoothGrad(network, samples=32, seed=0),
        "gradcam": GradCAM(network, layer),
        "guided_gradcam": GuidedGradCAM(network, layer),
    }


def perturbation_methods(network: nn.Module, ood: nn.Module | None) -> dict[str, Callable]:
    """Run on --perturbation-count images (RISE is K forward passes per image)."""
    softmax = nn.Softmax(dim=1)
    found: dict[str, Callable] = {
        "occlusion (3x3, stride 1)": Occlusion(network, softmax),
        "rise (4,000 masks)": RISE(network, softmax, num_masks=4000),
    }
    if ood is not None:
        found["rise_plus (4,000 masks)"] = RISEPlus(ood, network, softmax, num_masks=4000)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--perturbation-count", type=int, default=500)
    args = parser.parse_args()
    registry = ModelRegistry()
    network, manifest = registry.network("lenet5-shapes"), registry.manifest("lenet5-shapes")
    data = generate(args.count, TEST_SEED)
    inputs, labels = torch.from_numpy(data.normalised()), torch.from_numpy(data.labels)
    masks = torch.from_numpy(data.masks)
    with torch.inference_mode():
        correct = float((network(inputs).argmax(1) == labels).float().mean())
    print(f"# pointing game — lenet5-shapes, {args.count} held-out images (accuracy {correct:.3f}), ", end="")
    print(f"tolerance {TOLERANCE} px\n")
    print("| method | hit rate |")
    print("| --- | ---: |")
    centre = torch.zeros(1, 32, 32)
    centre[0, 15:17, 15:17] = 1
    print(f"| (centre of the image) | {hits(centre.expand(len(masks), 32, 32), masks).float().mean():.3f} |")
    chance = torch.rand(len(masks), 32, 32, generator=torch.Generator().manual_seed(0))
    print(f"| (random map) | {hits(chance, masks).float().mean():.3f} |")
    for name, explainer in methods(network, manifest.gradcam_layer).items():
        maps = torch.cat(
            [explainer(inputs[i : i + 100], labels[i : i + 100])[:, 0] for i in range(0, len(inputs), 100)]
        )
        print(f"| {name} | {hits(maps, masks).float().mean():.3f} |", flush=True)
    from workers.model_host import ModelHost

    ood = ModelHost(registry).ood_net("lenet5-shapes")
    count = min(args.perturbation_count, len(inputs))
    for name, explainer in perturbation_methods(network, ood).items():
        maps = torch.cat([explainer(inputs[i : i + 50], labels[i : i + 50])[:, 0] for i in range(0, count, 50)])
        print(f"| {name}, first {count} images | {hits(maps, masks[:count]).float().mean():.3f} |", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
