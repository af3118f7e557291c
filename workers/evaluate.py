"""Offline: how far each method's maps can be trusted on a set of images (``xai evaluate``).

    xai evaluate --model lenet5-shapes [--method gradient --method rise:num_masks=1000 ...]
                 [--shapes 1000 | --images DIR] [--steps 16] [--randomise 3] [--out out/evaluate]

Per method, over the images: deletion and insertion AUC (the service's defaults: removed pixels take the
image's mean colour, insertion starts from its blur), sparseness and complexity, class sensitivity (the
correlation of the maps of the explained class and of the least probable one), the randomisation check
(the rank correlation with the maps of the network whose top ``--randomise`` parameterised modules were
drawn again), and, where the objects' masks are known (``--shapes``), the pointing game and IoSR. Baselines
for scale: a random map and, with masks, the mask itself. Writes ``table.md``, ``table.json`` and a plot per
score (``<score>.png``). :func:`evaluate` is the library function under the command.

The explained class is the true label where known (the shapes), else the predicted class.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from core.methods import METHODS, MethodCallBase, call
from core.quality import SCORES, QualityOptions
from models.preprocessing import to_rgb
from models.shapes import generate
from models.train_shapes import TEST_SEED
from workers.commands import add_model_arguments, clear_bar, draw_bar, load_model, method_calls
from workers.methods import Context, build_explainer, explain, probabilities
from workers.model_host import ModelHost
from workers.network_inputs import network_inputs
from workers.quality import references_for
from workers.xai import Explainer
from workers.xai.quality import (
    complexity,
    correlation,
    faithfulness,
    iosr,
    pointing_hits,
    randomised_copy,
    rank_correlation,
    sparseness,
)

SANITY_THRESHOLD = 0.5  # a method passes the randomisation check when its mean rank correlation is below this
TOLERANCE = 1  # pointing game: pixels the mask is grown by (TorchRay: 15 px at 224; 1 px at 32)
CHUNK = {False: 100, True: 50}  # images per explainer call: gradient methods, perturbation methods
Progress = Callable[[str, float], None]


@dataclass
class Images:
    """What is evaluated: network inputs, their names, the classes to explain (None: the predicted ones)
    and the objects' masks where known."""

    inputs: Tensor
    names: list[str]
    labels: Tensor | None = None
    masks: Tensor | None = None


def shapes_images(count: int, seed: int = TEST_SEED) -> Images:
    """Held-out shapes (seed 3 by default: never trained on), with their labels and masks."""
    data = generate(count, seed)
    return Images(
        torch.from_numpy(data.normalised()),
        [f"shape{i}" for i in range(count)],
        torch.from_numpy(data.labels),
        torch.from_numpy(data.masks),
    )


def folder_images(directory: Path, host: ModelHost, model: str) -> Images:
    """Every image file of ``directory``, preprocessed for ``model``."""
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})
    if not paths:
        raise SystemExit(f"{directory}: no image files (png, jpg, jpeg, webp, bmp)")
    return Images(_inputs([to_rgb(Image.open(path)) for path in paths], host, model), [path.stem for path in paths])


def sample_photos(host: ModelHost, model: str) -> Images:
    """scikit-image's sample photos of things ImageNet has classes for: a cat, a cup of coffee, a rocket, an
    astronaut."""
    from skimage import data

    names = ["chelsea", "coffee", "rocket", "astronaut"]
    return Images(_inputs([Image.fromarray(getattr(data, name)()) for name in names], host, model), names)


def _inputs(photos: list[Image.Image], host: ModelHost, model: str) -> Tensor:
    """(N, 3, H, W) network inputs of RGB photos, as the model's manifest preprocesses them."""
    return network_inputs(photos, host.manifest(model).preprocessing)


MapsOf = Callable[[Context, Tensor, Tensor], Tensor]  # (context, inputs (N, C, H, W), targets (N, L)) -> maps


@dataclass(frozen=True)
class Subject:
    """What is evaluated: a name and how it makes (N, L, H, W) maps from a model's context."""

    name: str
    maps: MapsOf
    chunk: int = 100  # images per call
    needs_ood_head: bool = False

    @classmethod
    def of(cls, the_call: MethodCallBase) -> Subject:
        """A method call as the service runs it."""
        method = METHODS[the_call.name]
        built: dict[int, tuple[Context, Explainer]] = {}  # one explainer per context (network), for every chunk

        def maps(context: Context, inputs: Tensor, targets: Tensor) -> Tensor:
            if id(context) not in built:
                built[id(context)] = (context, build_explainer(the_call, context))
            return explain(the_call, built[id(context)][1], inputs, targets, lambda f: None)

        return cls(_label(the_call), maps, CHUNK[method.perturbation], method.needs_ood_head)


@dataclass
class Row:
    """One method's (or baseline's) scores, averaged over the images; None where a score does not apply."""

    name: str
    scores: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0


def evaluate(
    host: ModelHost,
    model: str,
    subjects: list[Subject | MethodCallBase],
    images: Images,
    *,
    options: QualityOptions | None = None,
    randomise: int = 3,
    scores: set[str] | None = None,
    progress: Progress | None = None,
) -> list[Row]:
    """The rows of the table: the baselines first, then one per subject (a method call, or a :class:`Subject`).
    ``scores``: the columns to compute (default: every one of :data:`COLUMNS`); the costly ones, faithfulness
    (deletion, insertion), class sensitivity and randomisation, are skipped when not asked for."""
    wanted = set(COLUMNS if scores is None else scores)
    unknown = wanted - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown scores {sorted(unknown)}; known: {', '.join(COLUMNS)}")
    if randomise < 1:
        raise ValueError(f"randomise must be >= 1, got {randomise}")
    options = options or QualityOptions()
    report = progress or (lambda stage, fraction: None)
    device = torch.device(host.device)
    images = Images(
        images.inputs.to(device),
        images.names,
        None if images.labels is None else images.labels.to(device),
        None if images.masks is None else images.masks.to(device),
    )
    context = host.context(model, seed=0)
    chance_of = torch.nn.Sequential(context.network, probabilities(context.probabilities))
    with torch.inference_mode():
        chances = torch.cat([chance_of(chunk) for chunk in images.inputs.split(256)])
    targets = images.labels if images.labels is not None else chances.argmax(1)
    bottom = chances.argmin(1)
    references = references_for(images.inputs, options, wanted)

    def measured(maps: Tensor) -> dict[str, float | None]:
        """The scores of (N, H, W) maps of the targets that need no other map."""
        found = _map_scores(maps, images.masks)
        if {"deletion_auc", "insertion_auc"} & wanted:
            curves = faithfulness(
                chance_of, images.inputs, maps[:, None], targets[:, None], steps=options.steps, **references
            )
            found |= {"deletion_auc": _mean(curves.deletion_auc), "insertion_auc": _mean(curves.insertion_auc)}
        return {name: value for name, value in found.items() if name in wanted}

    generator = torch.Generator().manual_seed(0)
    baselines = {
        "(the image centre)": _centre(images.inputs[:, 0].shape).to(device),
        "(a random map)": torch.rand(images.inputs[:, 0].shape, generator=generator).to(device),
    }
    if images.masks is not None:
        baselines["(the object's mask)"] = images.masks.float()
    rows = [Row(name, measured(maps)) for name, maps in baselines.items()]
    randomised = None
    if "randomisation" in wanted:
        network = randomised_copy(context.network, randomise)
        randomised = Context(network, context.default_layer, seed=0, probabilities=context.probabilities)
    for subject in subjects:
        subject = subject if isinstance(subject, Subject) else Subject.of(subject)
        started = time.perf_counter()
        report(subject.name, 0.0)
        sensitivity = "class_sensitivity" in wanted
        randomising = "randomisation" in wanted and not subject.needs_ood_head
        first_share = 0.5 if randomising else 1.0  # the randomised network's maps: the second half of the bar
        pairs = torch.stack([targets, bottom], 1)[:, : 1 + sensitivity]
        both = _maps(subject, context, images.inputs, pairs, _share(report, subject.name, 0.0, first_share))
        maps = both[:, 0]
        row = Row(subject.name, measured(maps))
        if sensitivity:
            row.scores["class_sensitivity"] = _mean(correlation(maps, both[:, 1]))
        if randomising and randomised is not None:
            again = _maps(subject, randomised, images.inputs, targets[:, None], _share(report, subject.name, 0.5, 0.5))
            row.scores["randomisation"] = _mean(rank_correlation(maps, again[:, 0]))
        elif "randomisation" in wanted:
            row.scores["randomisation"] = None  # its OoD head reads the trained network's features
        row.seconds = time.perf_counter() - started
        report(subject.name, 1.0)
        rows.append(row)
    return rows


def _centre(shape: torch.Size) -> Tensor:
    """(N, H, W) maps of a Gaussian bump at the image's centre (a quarter of its side): what a method that
    always looks at the middle would give."""
    height, width = shape[-2:]
    rows = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    columns = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    sigma = max(height, width) / 4
    bump = torch.exp(-(rows[:, None] ** 2 + columns[None, :] ** 2) / (2 * sigma**2))
    return bump.expand(shape).clone()


def _share(report: Progress, stage: str, first: float, share: float) -> Callable[[float], None]:
    return lambda done: report(stage, first + done * share)


def _maps(
    subject: Subject, context: Context, inputs: Tensor, targets: Tensor, report: Callable[[float], None]
) -> Tensor:
    """(N, L, H, W) maps of the (N, L) targets, in chunks."""
    found = []
    for start in range(0, len(inputs), subject.chunk):
        rows = slice(start, start + subject.chunk)
        found.append(subject.maps(context, inputs[rows], targets[rows]).detach().float())
        report(min(1.0, (start + subject.chunk) / len(inputs)))
    return torch.cat(found)


def _map_scores(maps: Tensor, masks: Tensor | None) -> dict[str, float | None]:
    found: dict[str, float | None] = {"sparseness": _mean(sparseness(maps)), "complexity": _mean(complexity(maps))}
    found["pointing_game"] = None if masks is None else _mean(pointing_hits(maps, masks, TOLERANCE).float())
    found["iosr"] = None if masks is None else _mean(iosr(maps, masks))
    return found


def _mean(values: Tensor | None) -> float | None:
    return None if values is None else round(float(values.float().mean()), 4)


def _label(the_call: MethodCallBase) -> str:
    """The method, with the parameters that differ from its defaults."""
    defaults = call(the_call.name).params.model_dump()
    changed = {k: v for k, v in the_call.params.model_dump().items() if defaults.get(k) != v}
    return the_call.name + ("" if not changed else " (" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")")


COLUMNS = [
    "deletion_auc",
    "insertion_auc",
    "sparseness",
    "complexity",
    "pointing_game",
    "iosr",
    "class_sensitivity",
    "randomisation",
]


def markdown(rows: list[Row]) -> str:
    """The table: a row per method, a column per score with which way is better."""
    arrows = {"higher": "↑", "lower": "↓"}
    shown = [c for c in COLUMNS if any(row.scores.get(c) is not None for row in rows)]
    head = "| method | " + " | ".join(f"{c} {arrows[SCORES[c].better]}" for c in shown) + " | randomisation check | s |"
    lines = [head, "| --- |" + " ---: |" * (len(shown) + 2)]
    for row in rows:
        cells = ["–" if row.scores.get(c) is None else f"{row.scores[c]:.3f}" for c in shown]
        check = row.scores.get("randomisation")
        verdict = "–" if check is None else ("passes" if check < SANITY_THRESHOLD else "**fails**")
        seconds = f"{row.seconds:.1f}" if row.seconds else "–"
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {verdict} | {seconds} |")
    return "\n".join(lines) + "\n"


def rankings(rows: list[Row]) -> str:
    """The methods ranked by deletion AUC and by pointing game side by side, with the rank correlation of the
    two orders (empty without masks)."""
    methods = [row for row in rows if not row.name.startswith("(")]
    if not methods or any(
        row.scores.get(name) is None for row in methods for name in ("deletion_auc", "pointing_game")
    ):
        return ""
    by_deletion = sorted(methods, key=lambda row: row.scores["deletion_auc"])
    by_pointing = sorted(methods, key=lambda row: -row.scores["pointing_game"])
    lines = ["| rank | by deletion AUC ↓ | by pointing game ↑ |", "| ---: | --- | --- |"]
    for rank, (first, second) in enumerate(zip(by_deletion, by_pointing, strict=True), start=1):
        lines.append(
            f"| {rank} | {first.name} ({first.scores['deletion_auc']:.3f}) "
            f"| {second.name} ({second.scores['pointing_game']:.3f}) |"
        )
    places = {row.name: place for place, row in enumerate(by_pointing)}
    first_order = torch.arange(len(methods), dtype=torch.float64)
    second_order = torch.tensor([places[row.name] for row in by_deletion], dtype=torch.float64)
    agreement = float(torch.corrcoef(torch.stack([first_order, second_order]))[0, 1]) if len(methods) > 1 else 1.0
    return "\n".join(lines) + f"\n\nSpearman correlation of the two rankings: {agreement:.2f}\n"


def plots(rows: list[Row], out: Path, title: str) -> list[Path]:
    """A horizontal bar chart per score (PNG): a bar per method, the better end marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    written = []
    for column in COLUMNS:
        kept = [row for row in rows if row.scores.get(column) is not None]
        if not kept:
            continue
        score = SCORES[column]
        figure, axes = pyplot.subplots(figsize=(7, 0.35 * len(kept) + 1.5), dpi=100)
        values = [row.scores[column] for row in kept]
        colours = ["#999999" if row.name.startswith("(") else "#3a6fd8" for row in kept]
        axes.barh([row.name for row in kept], values, color=colours)
        axes.invert_yaxis()
        axes.set_xlim(min(0.0, score.range[0], *values), max(score.range[1], *values))
        axes.set_title(f"{score.title} ({score.better} is better)\n{title}", fontsize=10)
        for position, value in enumerate(values):
            axes.text(value, position, f" {value:.3f}", va="center", fontsize=8)
        if column == "randomisation":
            axes.axvline(SANITY_THRESHOLD, color="#c03030", linestyle="--", linewidth=1)
            axes.text(SANITY_THRESHOLD, -0.6, " passes below", color="#c03030", fontsize=8)
        axes.tick_params(labelsize=8)
        figure.tight_layout()
        path = out / f"{column}.png"
        figure.savefig(path)
        pyplot.close(figure)
        written.append(path)
    return written


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xai evaluate", description=__doc__.splitlines()[0])
    add_model_arguments(parser, "lenet5-shapes")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--shapes", type=int, help="this many held-out shapes images, with their masks")
    source.add_argument("--images", type=Path, help="a folder of image files (default: the sample photos)")
    parser.add_argument("--steps", type=int, default=QualityOptions().steps, help="deletion and insertion steps")
    parser.add_argument(
        "--randomise", type=_at_least_one, default=3, help="top parameterised modules drawn again (>= 1)"
    )
    parser.add_argument("--scores", help=f"comma-separated scores to compute (default: all of {', '.join(COLUMNS)})")
    parser.add_argument("--out", type=Path, default=Path("out/evaluate"))
    args = parser.parse_args(argv)

    host = load_model(args.model, args.model_dirs)
    calls = method_calls(host, args.model, args.method)
    if args.shapes:
        images, what = shapes_images(args.shapes), f"{args.shapes} held-out shapes"
    elif args.images:
        images, what = folder_images(args.images, host, args.model), f"the {args.images} images"
    else:
        images, what = sample_photos(host, args.model), "scikit-image's sample photos"
    options = QualityOptions(steps=args.steps)
    started = time.perf_counter()
    chosen = set(args.scores.split(",")) if args.scores else None
    if chosen is not None and chosen - set(COLUMNS):
        raise SystemExit(f"unknown scores {sorted(chosen - set(COLUMNS))}; known: {', '.join(COLUMNS)}")
    rows = evaluate(
        host, args.model, calls, images, options=options, randomise=args.randomise, scores=chosen, progress=draw_bar
    )
    elapsed = time.perf_counter() - started
    clear_bar()
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.model}, {what}"
    ranked = rankings(rows)
    table = f"# {title}\n\n{markdown(rows)}\n{len(images.names)} images, {options.steps} steps, {elapsed:.0f} s\n"
    table += f"\n## The methods ranked two ways\n\n{ranked}" if ranked else ""
    (args.out / "table.md").write_text(table)
    document = {
        "model": args.model,
        "images": what,
        "steps": options.steps,
        "randomised_modules": args.randomise,
        "sanity_threshold": SANITY_THRESHOLD,
        "seconds": round(elapsed, 1),
        "rows": [{"name": row.name, "scores": row.scores, "seconds": round(row.seconds, 2)} for row in rows],
        "better": {name: SCORES[name].better for name in COLUMNS},
    }
    (args.out / "table.json").write_text(json.dumps(document, indent=2))
    written = plots(rows, args.out, title)
    print(table)
    print(f"table.md, table.json and {len(written)} plots written to {args.out}/")


if __name__ == "__main__":
    main()
