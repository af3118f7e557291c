"""Pointing game on lenet5-shapes: does each method's map peak on the labelled object?

    python -m bench.pointing_game [--count 1000]

TorchRay's definition: a hit when the map's maximum lies on the object's mask grown by a
tolerance (15 px at 224x224 in TorchRay; 1 px here at 32x32). Targets are the true labels, over
held-out images (seed 3, never trained on). Two baselines for scale: the image centre, and the
centre of mass of a uniform random map's maximum (chance).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from core.methods import call
from models.registry import ModelRegistry
from models.shapes import generate
from models.train_shapes import TEST_SEED
from workers.methods import Context, build_explainer
from workers.model_host import ModelHost
from workers.xai import Explainer

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


def methods(context: Context) -> dict[str, Explainer]:
    calls = [
        call("gradient"),
        call("deconvolution"),
        call("guided_backprop"),
        call("input_x_gradient"),
        call("integrated_gradients", steps=32),
        call("smoothgrad", samples=32),
        call("gradcam"),
        call("guided_gradcam"),
    ]
    return {method.name: build_explainer(method, context) for method in calls}


def perturbation_methods(context: Context) -> dict[str, Explainer]:
    """Run on --perturbation-count images (RISE is K forward passes per image)."""
    calls = {
        "occlusion (3x3, stride 1)": call("occlusion"),
        "rise (4,000 masks)": call("rise", num_masks=4000),
    }
    if context.ood_net is not None:
        calls["rise_plus (4,000 masks)"] = call("rise_plus", num_masks=4000)
    return {name: build_explainer(method, context) for name, method in calls.items()}


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
    ood = ModelHost(registry).ood_net("lenet5-shapes")
    context = Context(network, manifest.gradcam_layer, seed=0, ood_net=ood)
    for name, explainer in methods(context).items():
        maps = torch.cat(
            [explainer(inputs[i : i + 100], labels[i : i + 100])[:, 0] for i in range(0, len(inputs), 100)]
        )
        print(f"| {name} | {hits(maps, masks).float().mean():.3f} |", flush=True)
    count = min(args.perturbation_count, len(inputs))
    for name, explainer in perturbation_methods(context).items():
        maps = torch.cat([explainer(inputs[i : i + 50], labels[i : i + 50])[:, 0] for i in range(0, count, 50)])
        print(f"| {name}, first {count} images | {hits(maps, masks[:count]).float().mean():.3f} |", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
