"""Train an OoD head (OoDNet) for a registered model, on in-distribution images only.

    python -m workers.train_ood --model lenet5-shapes --shapes            # the synthetic generator
    python -m workers.train_ood --model my-model --images path/to/folder  # one sub-folder per class

The classifier stays frozen (the served weights are unchanged). The heads train on centred features
(``OoDNet.train(center_features=True)``; ``--no-center`` keeps MindSpore XAI's uncentred cosine,
measured far worse against noise, docs/models.md). They are written to
``--out`` (default: the model's folder, ``ood_head.pt``) with their SHA-256, for the manifest's
``[ood_head]``. Prints the AUROC of the OoD score between held-out in-distribution images and
uniform noise (and, for the shapes, a shape class the model never saw).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from models.loading import sha256_of
from models.manifest import Manifest
from models.preprocessing import preprocess
from models.registry import ModelRegistry
from models.shapes import UNSEEN, generate
from workers.network_inputs import network_inputs
from workers.xai import OoDNet

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
OOD_SEED, HELD_OUT_SEED, TRAIN_SEED = 6, 3, 5


def auroc(inliers: torch.Tensor, outliers: torch.Tensor) -> float:
    """Probability that an inlier scores higher than an outlier (ties count half)."""
    difference = inliers.double()[:, None] - outliers.double()[None, :]
    return float((difference > 0).double().mean() + 0.5 * (difference == 0).double().mean())


class ImageFolder(Dataset):
    """(image, label) from ``root/<label>/*.png``; folder names must be the model's labels."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        folders = sorted(path for path in root.iterdir() if path.is_dir())
        unknown = [folder.name for folder in folders if folder.name not in manifest.labels]
        if unknown:
            raise ValueError(f"--images: sub-folders {unknown} are not labels of {manifest.name!r}")
        self.items = [
            (path, manifest.labels.index(folder.name))
            for folder in folders
            for path in sorted(folder.iterdir())
            if path.suffix.lower() in SUFFIXES
        ]
        if not self.items:
            raise ValueError(f"--images: no images under {root}")
        self.spec = manifest.preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(path) as image:
            return torch.from_numpy(preprocess(image, self.spec)), label


def uniform_noise(count: int, manifest: Manifest, seed: int = OOD_SEED) -> torch.Tensor:
    """Uniform pixel noise, preprocessed as the model's photos are."""
    rng = np.random.default_rng(seed)
    height, width = manifest.preprocessing.size
    pixels = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    return network_inputs(list(pixels), manifest.preprocessing)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shapes", action="store_true", help="train on the synthetic shapes (lenet5-shapes)")
    source.add_argument("--images", type=Path, help="a folder with one sub-folder of images per class")
    parser.add_argument("--count", type=int, default=20_000, help="synthetic images to train on")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument(
        "--center", action=argparse.BooleanOptionalAction, default=True, help="centre the features (default: yes)"
    )
    parser.add_argument("--out", type=Path, help="where to write ood_head.pt (default: the model's folder)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    registry = ModelRegistry()
    manifest, network = registry.manifest(args.model), registry.network(args.model)
    if args.shapes:
        data = generate(args.count, TRAIN_SEED)
        dataset: Dataset = TensorDataset(torch.from_numpy(data.normalised()), torch.from_numpy(data.labels))
        held_out = torch.from_numpy(generate(1000, HELD_OUT_SEED).normalised())
    else:
        dataset = ImageFolder(args.images, manifest)
        held_out = torch.stack([dataset[i][0] for i in range(0, len(dataset), max(1, len(dataset) // 500))])
    ood = OoDNet(network, manifest.num_classes)
    ood.train(
        DataLoader(dataset, batch_size=128, shuffle=True),
        epoch=args.epochs,
        learning_rate=args.learning_rate,
        center_features=args.center,
        callbacks=lambda epoch, loss: print(f"epoch {epoch}: loss {loss:.4f}", flush=True),
    )
    ood.set_train(False)
    with torch.inference_mode():
        inliers = ood.ood_score(held_out)
        noise = ood.ood_score(uniform_noise(1000, manifest))
        print(f"AUROC in-distribution vs uniform noise: {auroc(inliers, noise):.3f}")
        if args.shapes:
            unseen = torch.from_numpy(generate(1000, OOD_SEED, shapes=UNSEEN).normalised())
            print(f"AUROC in-distribution vs unseen shapes {UNSEEN}: {auroc(inliers, ood.ood_score(unseen)):.3f}")
    out = args.out or manifest.folder
    out.mkdir(parents=True, exist_ok=True)
    ood.save(out / "ood_head.pt")
    print(f'wrote {out / "ood_head.pt"}\n[ood_head]\nfile = "ood_head.pt"\nsha256 = "{sha256_of(out / "ood_head.pt")}"')


if __name__ == "__main__":
    main()
