"""Explain local image files without a server, through the job runner the service runs its jobs with.

    xai explain [PHOTO ...] [--model efficientnet-lite0] [--method gradcam --method rise:num_masks=2000,p=0.5]
                [--top-k 1 | --target 281,285] [--model-dirs DIR,...] [--out out/maps] [--quick] [--sheet PNG]

Without photos it explains scikit-image's sample photo of a cat (``chelsea``). Without ``--method``, every
method the model can run (``GET /models/{name}`` lists the same). ``--quick`` takes cheaper parameters where
a method has a cost knob (a photo in seconds; what ``make maps`` does). Each photo is one job, checked as
``POST /explain`` checks a request and run by :class:`workers.job_runner.JobRunner` on an in-memory store,
so a map here is the map the service returns. Prints the predictions, a progress bar per photo on a terminal
and each method's time; writes ``<photo>_<method>_<class>_{heatmap,overlay}.png`` and ``summary.json`` (the
predictions, OoD score, each method's time, and each map's files).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from io import BytesIO
from pathlib import Path

from PIL import Image
from pydantic import ValidationError

from core.contract import ExplainOptions, JobView, RenderOptions, TopK
from core.errors import ServiceError
from core.jobs import JobRecords
from core.kv_memory import MemoryKeyValue
from core.maps import draw_map
from core.methods import METHODS
from core.quality import DEFAULT_QUALITY, SCORES
from core.settings import get_settings
from core.telemetry import Telemetry
from core.validation import build_spec
from models.registry import ModelRegistry
from workers.commands import add_model_arguments, clear_bar, draw_bar, load_model, method_calls
from workers.job_runner import JobRunner

ARROWS = {"higher": "↑", "lower": "↓"}  # which way each score is better
DAY_S = 86_400  # a local run is not stopped by the service's job time limit


def sample_photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())


def read_photo(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SystemExit(f"{path}: {error.strerror or error}") from None


def sample_bytes() -> bytes:
    buffer = BytesIO()
    sample_photo().save(buffer, format="PNG")
    return buffer.getvalue()


class ProgressBar:
    """A job's progress read from its record while the runner works (on a terminal; a log gets none)."""

    def __init__(self, records: JobRecords, job_id: str, label: str) -> None:
        self.records, self.job_id, self.label = records, job_id, label
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._draw, daemon=True)

    def __enter__(self) -> ProgressBar:
        if sys.stdout.isatty():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
            clear_bar()

    def _draw(self) -> None:
        while not self._done.wait(0.1):
            view = self.records.view(self.job_id)
            draw_bar(self.label, 0.0 if view is None else view.progress)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xai explain", description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", type=Path, help="image files (default: a sample photo of a cat)")
    add_model_arguments(parser, "efficientnet-lite0")
    parser.add_argument("--quick", action="store_true", help="cheaper parameters for the costly methods")
    parser.add_argument("--top-k", type=int, default=1, help="explain the k most probable classes")
    parser.add_argument("--target", help="comma-separated class ids to explain in every photo, instead of the top k")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stochastic methods")
    parser.add_argument(
        "--quality",
        default=",".join(DEFAULT_QUALITY),
        help="comma-separated scores of each map (GET /quality; default: %(default)s; 'none' for none): "
        + ", ".join(name for name, score in SCORES.items() if score.per_map),
    )
    parser.add_argument("--quality-steps", type=int, default=16, help="steps of the deletion and insertion curves")
    parser.add_argument("--out", type=Path, default=Path("out/maps"))
    parser.add_argument(
        "--sheet", type=Path, help="also a contact sheet PNG: per photo, each method's heatmap and overlay"
    )
    args = parser.parse_args(argv)

    host = load_model(args.model, args.model_dirs)
    registry, capabilities = host.registry, host.capabilities(args.model)
    calls = method_calls(host, args.model, args.method, args.quick)
    settings = get_settings()
    photos = [(path, read_photo(path)) for path in args.photos] or [(Path("cat"), sample_bytes())]
    largest = max(len(data) for _, data in photos)
    settings = settings.model_copy(
        update={
            "max_upload_bytes": max(settings.max_upload_bytes, largest),
            "job_time_limit_s": DAY_S,
            "batch_max_images": 1,  # one photo at a time: its own progress and times
        }
    )
    records, telemetry = JobRecords(MemoryKeyValue(), settings.result_ttl_s), Telemetry(MemoryKeyValue())
    runner = JobRunner(records, telemetry, host, settings, owner="xai-explain")
    try:
        explicit = [int(t) for t in args.target.split(",")] if args.target else None
    except ValueError:
        raise SystemExit(f"--target {args.target!r}: write class ids, e.g. 281,285") from None
    args.out.mkdir(parents=True, exist_ok=True)
    sheet: list[tuple[str, str, bytes, bytes]] = []  # (photo, method, heatmap, overlay) of each photo's top class
    summary: dict[str, object] = {"model": args.model, "methods": [c.model_dump() for c in calls], "photos": []}
    quality = [] if args.quality == "none" else [name for name in args.quality.split(",") if name]
    for path, data in photos:
        stem = path.stem
        options = _options(
            model=args.model,
            methods=calls,
            targets=[explicit] if explicit else TopK(top_k=args.top_k),
            outputs=["heatmap", "overlay"],
            render=RenderOptions(),
            seed=args.seed,
            quality=quality,
            quality_options={"steps": args.quality_steps},
        )
        try:
            spec, pixels = build_spec(options, [data], registry, lambda _: capabilities, settings)
        except ServiceError as error:
            raise SystemExit(f"{path}: {error.message.removeprefix('image 0: ')}") from None
        records.create(spec, pixels)
        with ProgressBar(records, spec.job_id, stem):
            runner.run(spec.job_id)
        view = records.view(spec.job_id)
        assert view is not None, "an in-memory job does not expire while it runs"
        summary["photos"].append(report(stem, view, records, registry, args.out, sheet))  # type: ignore[union-attr]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"maps and summary.json written to {args.out}/")
    if args.sheet:
        contact_sheet(sheet).save(args.sheet)
        print(f"contact sheet: {args.sheet}")


def _options(**given: object) -> ExplainOptions:
    try:
        return ExplainOptions(**given)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise SystemExit(problems) from None


def report(
    stem: str,
    view: JobView,
    records: JobRecords,
    registry: ModelRegistry,
    out: Path,
    sheet: list[tuple[str, str, bytes, bytes]],
) -> dict[str, object]:
    """Print one photo's job, write its maps, and return its entry of ``summary.json``."""
    if view.result is None:
        error = view.error
        raise SystemExit(f"{stem}: the job {view.state}" + (f": {error.code}: {error.message}" if error else ""))
    image = view.result.images[0]
    ood = "" if image.ood_score is None else f" (OoD score {image.ood_score:.3f})"
    shown = ", ".join(f"{p.label} [{p.class_id}] ({p.probability:.3f})" for p in image.predictions[:3])
    print(f"{stem}: {shown}{ood}")
    for method, ms in view.timings_ms.items():
        if ms == 0:
            continue  # the prediction came from the first method's forward pass
        print(f"  {method:26s} {ms:8.1f} ms")
    entry: dict[str, object] = {
        "photo": stem,
        "predictions": [p.model_dump() for p in image.predictions],
        "ood_score": image.ood_score,
        "timings_ms": {method: round(ms, 1) for method, ms in view.timings_ms.items() if method in METHODS},
        "maps": [],
    }
    top = image.maps[0].target if image.maps else None
    for found in image.maps:
        name = f"{stem}_{found.method}_{found.target}"
        drawn = {}
        for form in ("heatmap", "overlay"):
            png = draw_map(records, registry, view.job_id, None, 0, f"0/{found.method}/{found.target}", form, {})
            assert png is not None, "the job asked for both forms"
            (out / f"{name}_{form}.png").write_bytes(png)
            drawn[form] = png
        record = {"method": found.method, "target": found.target, "label": found.label}
        record |= {"heatmap": f"{name}_heatmap.png", "overlay": f"{name}_overlay.png"}
        if found.masks_used is not None:
            record["masks_used"] = found.masks_used
        if found.quality:
            record["quality"] = found.quality
            shown = ", ".join(
                f"{name} {value:.3f} {ARROWS[SCORES[name].better]}" for name, value in found.quality.items()
            )
            print(f"  {found.method:26s} {found.label}: {shown}")
        entry["maps"].append(record)  # type: ignore[union-attr]
        if found.target == top:
            sheet.append((f"{stem}: {found.label}", found.method, drawn["heatmap"], drawn["overlay"]))
    return entry


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
