"""Quality scores: our batched deletion and insertion against their bare forward passes and against the
obvious implementation (one forward pass per step per map, as Quantus and MindSpore XAI run them).

    python -m bench.quality [--repeats 5] [--shapes 1000]

1. One request: EfficientNet-Lite0, the sample cat at 224x224, the maps of 4 methods (gradient, gradcam,
   guided_backprop, input_x_gradient) for the top class, deletion and insertion AUC with 16 steps, scored by
   the worker's own function (``workers/quality.py``). "Bare": the same number of images through the
   network in the same batches, built beforehand: the cost the scores cannot avoid. "Obvious": each map's
   curves one step at a time, one image per forward pass.
2. Offline: deletion and insertion of 6 methods' maps on N held-out shapes (lenet5-shapes), ours against the
   obvious loop on the first 50 images (scaled to N), then the whole ``xai evaluate`` table of the 6 methods.
3. The references: on the N shapes, how often a map equal to the object's mask scores better than a uniform
   and a random map, for each kind of reference (the defaults are chosen from this table).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.timing import allocator_setting, interleaved_ms, machine
from core.contract import JobSpec, RenderOptions
from core.methods import call
from core.quality import QualityOptions
from models.preprocessing import preprocess
from workers.commands import load_model
from workers.evaluate import evaluate, shapes_images
from workers.methods import build_explainer, explain, probabilities
from workers.quality import QUALITY_BATCH, reference_images, score_maps
from workers.xai.quality import area, faithfulness, salience_ranks

REQUEST_METHODS = ["gradient", "gradcam", "guided_backprop", "input_x_gradient"]
OFFLINE_METHODS = ["gradient", "guided_backprop", "input_x_gradient", "integrated_gradients", "gradcam", "rise"]
OFFLINE_PARAMS = {"rise": {"num_masks": 1000}}


def obvious_curve(scores, image, saliency, target, reference, steps, deletion) -> torch.Tensor:
    """Petsiuk et al.'s loop as most code writes it: change one step's pixels, one forward pass, repeat
    (the oracle of ``tests/workers/test_quality_scores.py`` too)."""
    order = salience_ranks(saliency).flatten()
    current = image.clone() if deletion else reference.clone()
    source = reference if deletion else image
    points = []
    for step in range(steps + 1):
        changed = (order < round(step * order.numel() / steps)).reshape(saliency.shape)
        current = torch.where(changed, source, current)
        with torch.inference_mode():
            points.append(float(scores(current[None])[0, target]))
    return torch.tensor(points)


def one_request(repeats: int) -> None:
    from PIL import Image
    from skimage import data

    model = "efficientnet-lite0"
    host = load_model(model, None)
    manifest = host.manifest(model)
    context = host.context(model, seed=0)
    photo = Image.fromarray(data.chelsea())
    inputs = torch.from_numpy(preprocess(photo, manifest.preprocessing))[None]
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    scores = torch.nn.Sequential(context.network, probabilities(context.probabilities))
    with torch.inference_mode():
        target = int(scores(inputs).argmax())
    calls = [call(name) for name in REQUEST_METHODS]
    maps = {c.name: explain(c, build_explainer(c, context), inputs, torch.tensor([[target]]), print)[0] for c in calls}
    spec = JobSpec(
        job_id="bench", model=model, methods=calls, outputs=["raw"], render=RenderOptions(),
        quality=["deletion_auc", "insertion_auc"], quality_options=QualityOptions(steps=16),
        image_count=1, image_sizes=[photo.size],
    )  # fmt: skip
    ours = lambda: score_maps(spec, context, inputs, [maps], [[target]], lambda f: None)  # noqa: E731
    passes = faithfulness(
        scores, inputs, torch.stack(list(maps.values()), 1), torch.tensor([[target] * len(maps)]), steps=16,
        deletion_reference=inputs, insertion_reference=inputs,
    ).passes  # fmt: skip
    prebuilt = inputs.expand(passes, -1, -1, -1).clone().contiguous(memory_format=torch.channels_last)

    def bare() -> None:
        with torch.inference_mode():
            for chunk in prebuilt.split(QUALITY_BATCH):
                scores(chunk)

    options = QualityOptions()  # the service's defaults, as score_maps uses them
    deletion_reference = reference_images(inputs, options.deletion_reference, options.blur)[0]
    insertion_reference = reference_images(inputs, options.insertion_reference, options.blur)[0]

    def slow() -> None:
        for saliency in maps.values():
            obvious_curve(scores, inputs[0], saliency[0], target, deletion_reference, 16, True)
            obvious_curve(scores, inputs[0], saliency[0], target, insertion_reference, 16, False)

    ours_ms, bare_ms, slow_ms = interleaved_ms([ours, bare, slow], repeats)
    print("### One request: EfficientNet-Lite0, 224x224, 4 maps, deletion + insertion, 16 steps\n")
    print("| what | ms | ratio |\n| --- | ---: | ---: |")
    print(f"| bare: {passes} images through the network, batches of {QUALITY_BATCH} | {bare_ms:.0f} | 1.00 |")
    print(f"| ours (`workers/quality.py`) | {ours_ms:.0f} | {ours_ms / bare_ms:.2f} |")
    print(f"| obvious: {4 * 2 * 17} single-image passes | {slow_ms:.0f} | {slow_ms / bare_ms:.2f} |")
    print(f"\nours vs obvious: {slow_ms / ours_ms:.1f}x faster\n")


def offline(count: int) -> None:
    model = "lenet5-shapes"
    host = load_model(model, None)
    context = host.context(model, seed=0)
    images = shapes_images(count)
    scores = torch.nn.Sequential(context.network, probabilities(context.probabilities))
    calls = [call(name, **OFFLINE_PARAMS.get(name, {})) for name in OFFLINE_METHODS]
    maps = torch.cat(
        [explain(c, build_explainer(c, context), images.inputs, images.labels[:, None], lambda f: None) for c in calls],
        dim=1,
    )  # (N, 6, H, W)
    targets = images.labels[:, None].expand(-1, len(calls))
    options = QualityOptions()
    deletion_reference = reference_images(images.inputs, options.deletion_reference, options.blur)
    insertion_reference = reference_images(images.inputs, options.insertion_reference, options.blur)
    started = time.perf_counter()
    found = faithfulness(
        scores, images.inputs, maps, targets, steps=options.steps,
        deletion_reference=deletion_reference, insertion_reference=insertion_reference,
    )  # fmt: skip
    ours_s = time.perf_counter() - started
    sample = min(50, count)
    started = time.perf_counter()
    checked = []
    for i in range(sample):
        for m in range(len(calls)):
            image, saliency, label = images.inputs[i], maps[i, m], int(images.labels[i])
            curve = obvious_curve(scores, image, saliency, label, deletion_reference[i], options.steps, True)
            checked.append(abs(float(area(curve)) - float(found.deletion_auc[i, m])))
            obvious_curve(scores, image, saliency, label, insertion_reference[i], options.steps, False)
    slow_s = (time.perf_counter() - started) * count / sample
    print(f"### Offline: deletion + insertion of 6 methods' maps on {count} shapes (lenet5-shapes), 16 steps\n")
    print("| what | s | ratio |\n| --- | ---: | ---: |")
    print(f"| ours: {found.passes} images in batches of 64 | {ours_s:.1f} | 1.0 |")
    print(f"| obvious: one image per pass (first {sample} images, scaled) | {slow_s:.1f} | {slow_s / ours_s:.0f} |")
    print(f"\nlargest difference of a deletion AUC, ours against the obvious loop: {max(checked):.1e}\n")
    started = time.perf_counter()
    rows = evaluate(host, model, calls, images)
    print(f"### The whole `xai evaluate` table of the 6 methods on {count} shapes\n")
    print(f"{time.perf_counter() - started:.0f} s (every score; per method: "
          + ", ".join(f"{row.name} {row.seconds:.0f} s" for row in rows if row.seconds) + ")\n")  # fmt: skip


def references(count: int) -> None:
    model = "lenet5-shapes"
    host = load_model(model, None)
    context = host.context(model, seed=0)
    scores = torch.nn.Sequential(context.network, probabilities(context.probabilities))
    images = shapes_images(count)
    masks = images.masks.float()
    random = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    maps = torch.stack([masks, torch.ones_like(masks), random], dim=1)
    targets = images.labels[:, None].expand(-1, 3)
    print(f"### The mask against a uniform and a random map, {count} shapes, 16 steps\n")
    print("share of the images where the mask's score is the better one\n")
    print("| reference | deletion: vs uniform | vs random | insertion: vs uniform | vs random |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, blur in (("constant", 0.0), ("mean", 0.0), ("blur", 1 / 16), ("blur", 0.15)):
        reference = reference_images(images.inputs, kind, blur)
        found = faithfulness(
            scores, images.inputs, maps, targets, deletion_reference=reference, insertion_reference=reference
        )
        d, i = found.deletion_auc, found.insertion_auc
        shares = [float((d[:, 0] < d[:, k]).float().mean()) for k in (1, 2)]
        shares += [float((i[:, 0] > i[:, k]).float().mean()) for k in (1, 2)]
        name = f"{kind} ({blur:.3g} of the side)" if kind == "blur" else kind
        print(f"| {name} | " + " | ".join(f"{share:.3f}" for share in shares) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", type=int, default=1000)
    args = parser.parse_args()
    np.seterr(all="ignore")
    print(f"{machine()}; {allocator_setting()}\n")
    one_request(args.repeats)
    offline(args.shapes)
    references(args.shapes)


if __name__ == "__main__":
    main()
