"""Pointing game on the shapes models: does each method's map peak on the labelled object?

    python -m bench.pointing_game [--models lenet5-shapes vit-shapes] [--count 1000] [--perturbation-count 500]

TorchRay's definition: a hit when the map's maximum lies on the object's mask grown by a
tolerance (15 px at 224x224 in TorchRay; 1 px here at 32x32). Targets are the true labels, over
held-out images (seed 3, never trained on). Every method that runs on a model is scored (as the
service builds it, default parameters but for the costs below); one table, a column per model. Two
baselines for scale: the image centre, and a uniform random map (chance).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from core.methods import METHODS, call
from models.registry import ModelRegistry
from models.shapes import generate
from models.train_shapes import TEST_SEED
from workers.methods import build_explainer, explain
from workers.model_host import ModelHost

TOLERANCE = 1  # pixels
PARAMS = {  # what the table's rows name
    "integrated_gradients": {"steps": 32},
    "smoothgrad": {"samples": 32},
    "occlusion": {"window": (3, 3), "strides": (1, 1)},
    "rise": {"num_masks": 4000},
    "rise_plus": {"num_masks": 4000},
}
ROWS = {
    "integrated_gradients": "integrated_gradients (32 steps)",
    "smoothgrad": "smoothgrad (32 samples)",
    "occlusion": "occlusion (3x3 window, stride 1)",
    "rise": "rise (4,000 masks)",
    "rise_plus": "rise_plus (4,000 masks)",
}


def grown(masks: torch.Tensor, tolerance: int) -> torch.Tensor:
    """(N, H, W) bool masks dilated by a disk of radius ``tolerance``."""
    offsets = torch.arange(-tolerance, tolerance + 1)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= tolerance**2).float()[None, None]
    return F.conv2d(masks[:, None].float(), disk, padding=tolerance)[:, 0] > 0


def hits(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """maps (N, H, W) -> (N,) bool: the maximum falls on the grown mask."""
    flat = maps.flatten(1).argmax(dim=1)
    return grown(masks, TOLERANCE).flatten(1).gather(1, flat[:, None])[:, 0]


def scores(model: str, host: ModelHost, count: int, perturbation_count: int) -> tuple[float, dict[str, str]]:
    """(accuracy, per method its hit rate as the table shows it: '-' where the method does not run)."""
    data = generate(count, TEST_SEED)
    inputs, labels = torch.from_numpy(data.normalised()), torch.from_numpy(data.labels)
    masks = torch.from_numpy(data.masks)
    network, capabilities = host.network(model), host.capabilities(model)
    with torch.inference_mode():
        accuracy = float((network(inputs).argmax(1) == labels).float().mean())
    context = host.context(model, seed=0)
    found: dict[str, str] = {}
    for name, method in METHODS.items():
        if name in capabilities.unavailable:
            found[name] = "–"
            continue
        the_call = call(name, **PARAMS.get(name, {}))
        explainer = build_explainer(the_call, context)
        upto, step = (min(perturbation_count, count), 50) if method.perturbation else (count, 100)
        maps = torch.cat(
            [
                explain(the_call, explainer, inputs[i : i + step], labels[i : i + step, None], lambda f: None)[:, 0]
                for i in range(0, upto, step)
            ]
        )
        rate = f"{hits(maps, masks[:upto]).float().mean():.3f}"
        found[name] = rate if upto == count else f"{rate} (first {upto})"
        print(f"{model} {name}: {found[name]}", flush=True)
    return accuracy, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5-shapes", "vit-shapes"])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--perturbation-count", type=int, default=500)
    args = parser.parse_args()
    host = ModelHost(ModelRegistry(), served=args.models)
    results = {model: scores(model, host, args.count, args.perturbation_count) for model in args.models}
    masks = torch.from_numpy(generate(args.count, TEST_SEED).masks)
    centre = torch.zeros(1, 32, 32)
    centre[0, 15:17, 15:17] = 1
    chance = torch.rand(len(masks), 32, 32, generator=torch.Generator().manual_seed(0))
    print(f"\n# pointing game — {args.count} held-out shapes (seed {TEST_SEED}), tolerance {TOLERANCE} px\n")
    print("| method | " + " | ".join(f"{m} (accuracy {results[m][0]:.3f})" for m in args.models) + " |")
    print("| --- |" + " ---: |" * len(args.models))
    for label, maps in (
        ("(the image centre, for scale)", centre.expand(len(masks), 32, 32)),
        ("(a random map)", chance),
    ):
        rate = f"{hits(maps, masks).float().mean():.3f}"
        print(f"| {label} | " + " | ".join(rate for _ in args.models) + " |")
    for name in METHODS:
        row = ROWS.get(name, name)
        layer = {m: host.capabilities(m).default_layer for m in args.models}
        if METHODS[name].uses_layer:
            row += " (" + ", ".join(f"`{layer[m]}`" for m in args.models) + ")"
        print(f"| {row} | " + " | ".join(results[m][1][name] for m in args.models) + " |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
