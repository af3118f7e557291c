"""Check model folders the way the service will load them, before deploying them.

    xai models check DIR [DIR ...] [--json] [--no-run]

DIR is a model folder (it holds ``manifest.toml``) or a directory of them. For each model: the manifest
(fields, labels, files), the weights' SHA-256, the network built and run on a blank image (the outputs
against the labels), the OoD head, the layers layer methods may use, and every method the model can
run, run once on the blank image with small parameters (``--no-run`` skips this). Exit status 0 when
every model would serve, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.methods import METHODS, call
from models.loading import verified_weights
from models.manifest import ManifestError
from models.registry import ModelRegistry
from workers.methods import build_explainer, explain, probabilities
from workers.model_host import ModelHost

# Small enough that every method runs in seconds on a CPU; the point is that it runs, not the map.
SMOKE = {
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 2},
    "rise": {"num_masks": 64},
    "rise_plus": {"num_masks": 64},
}


@dataclass
class ModelReport:
    name: str
    folder: str
    ok: bool = False
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    default_layer: str | None = None
    layers: list[str] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)  # method -> "ok 12 ms" or its error
    unavailable: dict[str, str] = field(default_factory=dict)


def check(directories: list[Path], run: bool = True) -> list[ModelReport]:
    """One report per model found (broken manifests included)."""
    registry = ModelRegistry(directories)
    reports = [ModelReport(name, "", error=error) for name, error in registry.broken.items()]
    host = ModelHost(registry)
    for name in registry.names():
        manifest = registry.manifest(name)
        report = ModelReport(name, str(manifest.folder))
        reports.append(report)
        height, width = manifest.preprocessing.size
        report.summary = {
            "version": manifest.version,
            "labels": manifest.num_classes,
            "input": f"{height}x{width} {manifest.preprocessing.resize}",
        }
        try:
            verified_weights(manifest)
            report.summary["weights"] = f"{manifest.weights.format}, SHA-256 matches"
            started = time.perf_counter()
            network = host.network(name)
            report.summary["load"] = f"{time.perf_counter() - started:.2f} s"
            capabilities = host.capabilities(name)
        except Exception as error:  # what the server would show as the model's load error
            report.error = f"{type(error).__name__}: {error}"
            continue
        report.summary["ood_head"] = "loaded" if host.ood_net(name) is not None else "none"
        report.default_layer, report.layers = capabilities.default_layer, host.layers(name)
        report.unavailable = dict(capabilities.unavailable)
        blank = torch.zeros(1, 3, height, width)
        with torch.inference_mode():
            chances = probabilities(manifest.probabilities)(network(blank))[0]
        top = int(chances.argmax())
        report.summary["blank image"] = f"top class {manifest.labels[top]!r} ({float(chances[top]):.3f})"
        smoke = SMOKE | {"occlusion": {"window": (max(1, height // 8), max(1, width // 8))}}
        failures, context = 0, host.context(name, seed=0)
        for method in METHODS:
            if method in capabilities.unavailable:
                continue
            if not run:
                report.methods[method] = "available"
                continue
            started = time.perf_counter()
            try:
                the_call = call(method, **smoke.get(method, {}))
                maps = explain(the_call, build_explainer(the_call, context), blank, torch.tensor([[top]]), _ignore)
                if tuple(maps.shape) != (1, 1, height, width) or not bool(torch.isfinite(maps).all()):
                    raise ValueError(f"a map of shape {tuple(maps.shape)} with non-finite values")
                report.methods[method] = f"ok {(time.perf_counter() - started) * 1000:.0f} ms"
            except Exception as error:
                failures += 1
                report.methods[method] = f"failed: {type(error).__name__}: {error}"
        report.ok = failures == 0
        if failures:
            report.error = f"{failures} method(s) failed on a blank image"
    return sorted(reports, key=lambda report: report.name)


def _ignore(fraction: float) -> None:
    pass


def _print(report: ModelReport) -> None:
    print(
        f"{report.name}: {'ready to serve' if report.ok else 'NOT SERVED'}"
        + (f" ({report.folder})" if report.folder else "")
    )
    if report.error:
        print(f"  error: {report.error}")
    for key, value in report.summary.items():
        print(f"  {key:12s} {value}")
    if report.layers:
        shown = " ".join(report.layers[-8:])
        more = f" (and {len(report.layers) - 8} before)" if len(report.layers) > 8 else ""
        print(f"  {'layers':12s} {shown}{more}; default {report.default_layer}")
    for method, outcome in report.methods.items():
        print(f"  {method:28s} {outcome}")
    for method, why in report.unavailable.items():
        print(f"  {method:28s} unavailable: {why}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xai models check", description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path, help="model folders, or directories holding them")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--no-run", action="store_true", help="do not run each method on a blank image")
    args = parser.parse_args(argv)
    logging.disable(logging.ERROR)  # every error is in the report
    try:
        reports = check(args.directories, run=not args.no_run)
    except ManifestError as error:  # a directory that does not exist
        sys.exit(f"error: {error}")
    if not reports:
        sys.exit(f"error: no manifest.toml in {', '.join(map(str, args.directories))}")
    if args.json:
        print(json.dumps([asdict(report) for report in reports], indent=2))
    else:
        for report in reports:
            _print(report)
    sys.exit(0 if all(report.ok for report in reports) else 1)


if __name__ == "__main__":
    main()
