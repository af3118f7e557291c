"""Explain local image files without a server, and write the maps as PNGs.

    xai explain [PHOTO ...] [--model efficientnet-lite0] [--methods gradcam,rise] [--param rise.num_masks=2000]
                [--top-k 1 | --targets 281,285] [--model-dirs DIR,...] [--out out/maps] [--quick] [--sheet PNG]

Without photos it explains scikit-image's sample photo of a cat (``chelsea``). Without ``--methods``, every
method the model can run (``GET /models/{name}`` lists the same). ``--quick`` takes cheaper parameters where
a method has a cost knob (a photo in seconds; what ``make maps`` does). Prints the predictions, each method's
time and, for the perturbation methods, their progress; writes ``<photo>_<method>_<class>_{heatmap,overlay}.png``
and ``summary.json`` (the predictions, each method's time, the files of each map).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from core.contract import RenderOptions
from core.methods import METHODS, call
from core.render import map_png
from models.manifest import Manifest
from models.preprocessing import preprocess, to_rgb
from models.registry import BUNDLED, ModelRegistry
from workers.methods import build_explainer, explain, probabilities
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


def parse_params(given: list[str]) -> dict[str, dict[str, object]]:
    """``method.name=value`` (value as JSON, else a string) -> {method: {name: value}}."""
    found: dict[str, dict[str, object]] = {}
    for item in given:
        key, equals, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not equals or not dot:
            raise SystemExit(f"--param {item!r}: write method.name=value, e.g. rise.num_masks=2000")
        try:
            value: object = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        found.setdefault(method, {})[name] = value
    return found


def progress_bar(name: str) -> Callable[[float], None]:
    def show(fraction: float) -> None:
        filled = int(fraction * 30)
        sys.stdout.write(f"\r{name:28s} [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}%")
        sys.stdout.flush()

    return show


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xai explain", description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", type=Path, help="image files (default: a sample photo of a cat)")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--model-dirs", help="comma-separated model directories (default: the bundled models)")
    parser.add_argument("--methods", help="comma-separated methods (default: every method the model can run)")
    parser.add_argument("--param", action="append", default=[], help="method.name=value, e.g. rise.num_masks=2000")
    parser.add_argument("--quick", action="store_true", help="cheaper parameters for the costly methods")
    parser.add_argument("--top-k", type=int, default=1, help="explain the k most probable classes")
    parser.add_argument("--targets", help="comma-separated class ids to explain instead of the top k")
    parser.add_argument("--out", type=Path, default=Path("out/maps"))
    parser.add_argument(
        "--sheet", type=Path, help="also a contact sheet PNG: per photo, each method's heatmap and overlay"
    )
    args = parser.parse_args(argv)

    registry = ModelRegistry(args.model_dirs.split(",") if args.model_dirs else [BUNDLED])
    host = ModelHost(registry, served=[args.model])
    manifest = host.manifest(args.model)
    capabilities = host.capabilities(args.model)
    wanted = args.methods.split(",") if args.methods else [m for m in METHODS if m not in capabilities.unavailable]
    for name in wanted:
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}; known: {', '.join(METHODS)}")
        if name in capabilities.unavailable:
            raise SystemExit(f"{name} does not run on {args.model}: {capabilities.unavailable[name]}")
    params = parse_params(args.param)
    calls = [call(name, **{**(QUICK.get(name, {}) if args.quick else {}), **params.get(name, {})}) for name in wanted]
    context = host.context(args.model, seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    photos = [(path.stem, to_rgb(Image.open(path))) for path in args.photos] or [("cat", sample_photo())]
    sheet: list[tuple[str, str, bytes, bytes]] = []  # (photo, method, heatmap, overlay) of each photo's top class
    summary: dict[str, object] = {"model": args.model, "methods": [c.model_dump() for c in calls], "photos": []}
    explicit = [int(t) for t in args.targets.split(",")] if args.targets else None
    for target in explicit or []:
        if not 0 <= target < manifest.num_classes:
            raise SystemExit(f"class id {target} is out of range for {args.model} (0..{manifest.num_classes - 1})")
    for stem, photo in photos:
        inputs = to_input(photo, manifest).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            chances = probabilities(manifest.probabilities)(context.network(inputs))
        top = chances.topk(max(args.top_k, 5), dim=1)
        ranked = list(zip(top.indices[0].tolist(), top.values[0].tolist(), strict=True))
        print(f"{stem}: " + ", ".join(f"{manifest.labels[c]} [{c}] ({p:.3f})" for c, p in ranked[: args.top_k]))
        targets = torch.tensor([explicit or top.indices[0, : args.top_k].tolist()])
        record: dict[str, object] = {
            "photo": stem,
            "predictions": [
                {"class_id": c, "label": manifest.labels[c], "probability": round(p, 6)} for c, p in ranked
            ],
            "timings_ms": {},
            "maps": [],
        }
        summary["photos"].append(record)  # type: ignore[union-attr]
        for the_call in calls:
            started = time.perf_counter()
            shown = METHODS[the_call.name].perturbation and sys.stdout.isatty()  # a log gets the time only
            report = progress_bar(the_call.name) if shown else lambda fraction: None
            maps = explain(the_call, build_explainer(the_call, context), inputs, targets, report)[0]
            elapsed = time.perf_counter() - started
            record["timings_ms"][the_call.name] = round(elapsed * 1000, 1)  # type: ignore[index]
            for target, saliency in zip(targets[0].tolist(), maps.detach().float().numpy(), strict=True):
                name = f"{stem}_{the_call.name}_{target}"
                options = RenderOptions()
                heat = map_png(saliency, options, photo_size=photo.size, preprocessing=manifest.preprocessing)
                (args.out / f"{name}_heatmap.png").write_bytes(heat)
                over = map_png(saliency, options, photo=photo, preprocessing=manifest.preprocessing)
                (args.out / f"{name}_overlay.png").write_bytes(over)
                record["maps"].append(  # type: ignore[union-attr]
                    {"method": the_call.name, "target": target, "label": manifest.labels[target],
                     "heatmap": f"{name}_heatmap.png", "overlay": f"{name}_overlay.png"}
                )  # fmt: skip
                if target == targets[0, 0].item():
                    sheet.append((f"{stem}: {manifest.labels[target]}", the_call.name, heat, over))
            print(f"\r{the_call.name:28s} {elapsed * 1000:8.1f} ms" + " " * 30)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"maps and summary.json written to {args.out}/")
    if args.sheet:
        contact_sheet(sheet).save(args.sheet)
        print(f"contact sheet: {args.sheet}")


def contact_sheet(cells: list[tuple[str, str, bytes, bytes]], side: int = 160) -> Image.Image:
    """Per photo two rows (heatmaps, overlays), a column per method, each labelled."""
    from io import BytesIO

    from PIL import ImageDraw

    def thumbnail(png: bytes) -> Image.Image:
        image = Image.open(BytesIO(png)).convert("RGB")
        image.thumbnail((side, side))
        return image

    drawn = {(photo, method): (thumbnail(heat), thumbnail(over)) for photo, method, heat, over in cells}
    photos = list(dict.fromkeys(photo for photo, _, _, _ in cells))
    methods = list(dict.fromkeys(method for _, method, _, _ in cells))
    label, margin = 14, 4
    tall = {photo: max(pair[0].height for (p, _), pair in drawn.items() if p == photo) for photo in photos}
    width = len(methods) * (side + margin) + margin
    sheet = Image.new("RGB", (width, sum(2 * label + 2 * tall[p] + 2 * margin for p in photos)), "white")
    draw = ImageDraw.Draw(sheet)
    top = 0
    for photo in photos:
        draw.text((margin, top + 1), photo, fill="black")
        for column, method in enumerate(methods):
            if (photo, method) not in drawn:
                continue
            left = margin + column * (side + margin)
            draw.text((left, top + label), method, fill="black")
            heat, over = drawn[photo, method]
            sheet.paste(heat, (left, top + 2 * label))
            sheet.paste(over, (left, top + 2 * label + tall[photo] + margin))
        top += 2 * label + 2 * tall[photo] + 2 * margin
    return sheet


if __name__ == "__main__":
    main()
