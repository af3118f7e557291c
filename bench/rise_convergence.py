"""RISE with a tolerance: how many masks each map needs, how close it is to the full map, the time saved.

    python -m bench.rise_convergence [--masks 6000] [--tolerances 0.05,0.1,0.2]

Per model (EfficientNet-Lite0 on the cat photo and its mirror image, lenet5-shapes on 8 shapes) and
tolerance: the masks used per image, the correlation of the centred early map with the full map's,
and the time of both, measured in one run under the same allocator setting.
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image
from skimage import data

from bench.timing import allocator_setting, machine
from core.methods import call
from models.preprocessing import preprocess
from models.registry import ModelRegistry
from models.shapes import generate
from workers.methods import Context, build_explainer
from workers.xai import RISE


def inputs_of(registry: ModelRegistry, model: str) -> torch.Tensor:
    if model == "lenet5-shapes":
        return torch.from_numpy(generate(8, 3).normalised())
    photo = Image.fromarray(data.chelsea())
    x = torch.from_numpy(preprocess(photo, registry.manifest(model).preprocessing)).unsqueeze(0)
    return torch.cat([x, x.flip(-1)]).contiguous(memory_format=torch.channels_last)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, the correlation of two centred (N, 1, H, W) maps."""
    a = (a - a.mean(dim=(2, 3), keepdim=True)).flatten(1)
    b = (b - b.mean(dim=(2, 3), keepdim=True)).flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def timed(explainer: RISE, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    maps = explainer(x, targets)
    return maps, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=6000)
    parser.add_argument("--tolerances", default="0.05,0.1,0.2")
    parser.add_argument("--models", default="efficientnet-lite0,lenet5-shapes")
    args = parser.parse_args(argv)
    registry = ModelRegistry()
    print(f"# RISE with a tolerance — {machine()}; {allocator_setting()}; {args.masks} masks\n")
    print("| model | tolerance | masks used per image | correlation with the full map (min / mean) |", end="")
    print(" s | full s | ratio |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    for model in args.models.split(","):
        network = registry.network(model)
        context = Context(network, registry.manifest(model).gradcam_layer)
        x = inputs_of(registry, model)
        with torch.inference_mode():
            targets = network(x).argmax(dim=1)
        build_explainer(call("rise", num_masks=args.masks), context)(x[:1], targets[:1])  # masks cached, warm
        full, full_s = timed(build_explainer(call("rise", num_masks=args.masks), context), x, targets)
        for tolerance in (float(t) for t in args.tolerances.split(",")):
            explainer = build_explainer(call("rise", num_masks=args.masks, tolerance=tolerance), context)
            early, early_s = timed(explainer, x, targets)
            agree = correlation(full, early)
            print(
                f"| {model} | {tolerance:g} | {explainer.masks_used} | {float(agree.min()):.4f} / "
                f"{float(agree.mean()):.4f} | {early_s:.2f} | {full_s:.2f} | {early_s / full_s:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
