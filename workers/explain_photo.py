"""Explain a photo with every method (those needing an OoD head where the model has one) and write PNGs.

    python -m workers.explain_photo [--photo cat.jpg] [--model efficientnet-lite0] [--out out/maps] [--top-k 1]

Without ``--photo`` it uses scikit-image's sample photo of a cat (``chelsea``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from core.render import heatmap, overlay
from models.manifest import Manifest
from models.preprocessing import map_to_photo, preprocess, to_rgb
from models.registry import ModelRegistry
from workers.methods import all_calls, build_explainer, explain
from workers.model_host import ModelHost

# Cheaper settings than the service's defaults where a method has a cost knob: a photo in seconds.
QUICK = {
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 16},
    "rise": {"num_masks": 1000},
    "rise_plus": {"num_masks": 1000},
}


def sample_photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())


def to_input(photo: Image.Image, manifest: Manifest) -> torch.Tensor:
    """(1, 3, H, W) as the manifest's preprocessing says."""
    return torch.from_numpy(preprocess(photo, manifest.preprocessing)).unsqueeze(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, help="an image file (default: a sample photo of a cat)")
    parser.add_argument("--model", default="efficientnet-lite0", help="a model of the bundled zoo")
    parser.add_argument("--out", type=Path, default=Path("out/maps"))
    parser.add_argument("--top-k", type=int, default=1, help="explain the k most probable classes")
    args = parser.parse_args(argv)

    photo = to_rgb(Image.open(args.photo)) if args.photo else sample_photo()
    registry = ModelRegistry()
    manifest = registry.manifest(args.model)
    network = registry.network(args.model)
    inputs = to_input(photo, manifest).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        probabilities = network(inputs).softmax(dim=1)
    top = probabilities.topk(args.top_k, dim=1)
    targets = top.indices  # (1, k)
    ranked = zip(top.indices[0].tolist(), top.values[0].tolist(), strict=True)
    print("top classes:", ", ".join(f"{manifest.labels[c]} [{c}] ({p:.3f})" for c, p in ranked))

    host = ModelHost(registry)
    capabilities = host.capabilities(args.model)
    context = host.context(args.model, seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    height, width = manifest.preprocessing.size
    occlusion = {"window": (max(1, height // 16), max(1, width // 16))}  # 14 x 14 at 224, 2 x 2 at 32
    for call in all_calls(**QUICK, occlusion=occlusion):
        if call.name in capabilities.unavailable:
            print(f"{call.name:28s} skipped: {capabilities.unavailable[call.name]}")
            continue
        start = time.perf_counter()
        maps = explain(call, build_explainer(call, context), inputs, targets, lambda fraction: None)[0]
        elapsed = time.perf_counter() - start
        for target, saliency in zip(targets[0].tolist(), maps.detach().numpy(), strict=True):
            heatmap(saliency).save(args.out / f"{call.name}_{target}_heatmap.png")
            on_photo = map_to_photo(saliency, photo.size, manifest.preprocessing)
            overlay(on_photo, photo).save(args.out / f"{call.name}_{target}_overlay.png")
        print(f"{call.name:28s} {elapsed * 1000:8.1f} ms")
    print(f"maps written to {args.out}/")


if __name__ == "__main__":
    main()
