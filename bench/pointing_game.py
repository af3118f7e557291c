"""Pointing game on the shapes models: does each method's map peak on the labelled object?

    python -m bench.pointing_game [--models lenet5-shapes vit-shapes] [--count 1000] [--perturbation-count 500]

A use of ``xai evaluate``'s function (``workers/evaluate.py``) with one score: TorchRay's definition, a hit
when the map's maximum lies on the object's mask grown by a tolerance (15 px at 224x224 in TorchRay; 1 px
here at 32x32). Targets are the true labels, over held-out images (seed 3, never trained on). Every method
that runs on a model is scored (as the service builds it, default parameters but for the costs below); one
table, a column per model. Baselines for scale: the image centre, a uniform random map (chance) and the
mask itself.
"""

from __future__ import annotations

import argparse

from core.methods import METHODS, call
from workers.commands import load_model
from workers.evaluate import TOLERANCE, Images, evaluate, shapes_images

PARAMS = {  # what the table's rows name
    "integrated_gradients": {"steps": 32},
    "smoothgrad": {"samples": 32},
    "occlusion": {"window": (3, 3), "strides": (1, 1)},
    "rise": {"num_masks": 4000},
    "rise_plus": {"num_masks": 4000},
}


def key(row_name: str) -> str:
    """A row's method (a baseline's name as it is)."""
    return row_name if row_name.startswith("(") else row_name.split(" (")[0]


def scores(model: str, images: Images, perturbation_count: int) -> tuple[float, dict[str, str], dict[str, str]]:
    """(accuracy, per method or baseline its hit rate as the table shows it ('–' where the method does not run),
    per method the row's label)."""
    host = load_model(model, None)
    capabilities = host.capabilities(model)
    accuracy = float((host.network(model)(images.inputs).argmax(1) == images.labels).float().mean())
    found: dict[str, str] = dict.fromkeys(capabilities.unavailable, "–")
    labels: dict[str, str] = {}
    for perturbation in (False, True):
        names = [n for n, m in METHODS.items() if m.perturbation == perturbation and n not in capabilities.unavailable]
        count = min(perturbation_count, len(images.names)) if perturbation else len(images.names)
        subset = Images(images.inputs[:count], images.names[:count], images.labels[:count], images.masks[:count])
        calls = [call(name, **PARAMS.get(name, {})) for name in names]
        for row in evaluate(host, model, calls, subset, scores={"pointing_game"}):
            if row.name.startswith("(") and perturbation:
                continue  # the baselines are those of the whole set
            rate = f"{row.scores['pointing_game']:.3f}"
            found[key(row.name)] = rate if count == len(images.names) else f"{rate} (first {count})"
            labels[key(row.name)] = row.name
            if METHODS.get(key(row.name)) and METHODS[key(row.name)].uses_layer:
                labels[key(row.name)] += f" (`{capabilities.default_layer}`)"
            print(f"{model} {row.name}: {found[key(row.name)]}", flush=True)
    return accuracy, found, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5-shapes", "vit-shapes"])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--perturbation-count", type=int, default=500)
    args = parser.parse_args()
    images = shapes_images(args.count)
    results = {model: scores(model, images, args.perturbation_count) for model in args.models}
    print(f"\n# pointing game — {args.count} held-out shapes (seed 3), tolerance {TOLERANCE} px\n")
    print("| method | " + " | ".join(f"{m} (accuracy {results[m][0]:.3f})" for m in args.models) + " |")
    print("| --- |" + " ---: |" * len(args.models))
    rows = ["(the image centre)", "(a random map)", "(the object's mask)", *METHODS]
    for name in rows:
        label = " / ".join(dict.fromkeys(results[m][2][name] for m in args.models if name in results[m][2])) or name
        print(f"| {label} | " + " | ".join(results[m][1].get(name, "–") for m in args.models) + " |")


if __name__ == "__main__":
    main()
