"""Train a network of the zoo on the synthetic shapes and write its weights.

    python -m models.train_shapes [--model lenet5-shapes|vit-shapes] [--epochs N] [--train-count N] [--out DIR]

Deterministic (seeded data and initialisation); LeNet5 takes a few minutes on two CPU cores, the
small ViT about half an hour. Prints the held-out accuracy and writes the weights' SHA-256 and the
accuracy into the model's manifest.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.lenet5 import LeNet5
from models.loading import sha256_of
from models.shapes import CLASSES, generate
from models.vit import ViT

TRAIN_SEED, TEST_SEED = 1, 3  # TEST_SEED's images are the held-out set everywhere
EPOCHS, TRAIN_COUNT = 20, 60_000  # what produced the committed lenet5-shapes weights
ZOO = Path(__file__).resolve().parent / "zoo"
ZOO_FOLDER = ZOO / "lenet5-shapes"


@dataclass(frozen=True)
class Recipe:
    """How one network of the zoo is trained (what produced its committed weights)."""

    build: Callable[[], nn.Module]
    epochs: int
    learning_rate: float
    weight_decay: float
    train_count: int = TRAIN_COUNT


RECIPES = {
    "lenet5-shapes": Recipe(lambda: LeNet5(num_classes=len(CLASSES)), EPOCHS, 3e-3, 1e-4),
    # Transformers want a gentler rate and more decay than a small CNN (as in DeiT's recipe).
    "vit-shapes": Recipe(lambda: ViT(num_classes=len(CLASSES)), 30, 1e-3, 0.05),
}


def accuracy(network: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    network.eval()
    with torch.inference_mode():
        predicted = torch.cat([network(inputs[i : i + batch]).argmax(1) for i in range(0, len(inputs), batch)])
    return float((predicted == labels).float().mean())


def train(
    epochs: int, train_count: int, seed: int = 0, log: bool = True, model: str = "lenet5-shapes"
) -> tuple[nn.Module, float]:
    """Returns the network and its accuracy on 10,000 held-out images."""
    recipe = RECIPES[model]
    torch.manual_seed(seed)
    data = generate(train_count, TRAIN_SEED)
    inputs, labels = torch.from_numpy(data.normalised()), torch.from_numpy(data.labels)
    held_out = generate(10_000, TEST_SEED)
    test_inputs, test_labels = torch.from_numpy(held_out.normalised()), torch.from_numpy(held_out.labels)
    network = recipe.build()
    optimiser = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps_per_epoch = -(-train_count // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=recipe.learning_rate, total_steps=epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        network.train()
        start = time.perf_counter()
        order = torch.randperm(train_count, generator=generator)
        for i in range(0, train_count, 128):
            rows = order[i : i + 128]
            # Flips and quarter turns keep every class what it is and the object's mask meaningful.
            batch = torch.rot90(inputs[rows], k=int(torch.randint(4, (1,), generator=generator)), dims=(2, 3))
            loss = F.cross_entropy(network(batch), labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        if log:
            print(
                f"epoch {epoch + 1}: loss {loss.item():.3f}, held-out accuracy "
                f"{accuracy(network, test_inputs, test_labels):.4f} ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    return network.eval(), accuracy(network, test_inputs, test_labels)


def write_manifest_figures(folder: Path, sha256: str, held_out_accuracy: float) -> None:
    path = folder / "manifest.toml"
    text = path.read_text(encoding="utf-8")
    text = re.sub(r'sha256 = "[0-9a-f]{64}"(\s*# weights)', f'sha256 = "{sha256}"\\1', text)
    text = re.sub(r"held-out accuracy [0-9.]+%", f"held-out accuracy {held_out_accuracy * 100:.2f}%", text)
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RECIPES), default="lenet5-shapes")
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--train-count", type=int, default=TRAIN_COUNT)
    parser.add_argument("--out", type=Path, help="default: the model's folder in the zoo")
    args = parser.parse_args(argv)
    out = args.out or ZOO / args.model
    network, held_out = train(args.epochs or RECIPES[args.model].epochs, args.train_count, model=args.model)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{args.model}.pt"
    torch.save(network.state_dict(), weights)
    digest = sha256_of(weights)
    print(f"held-out accuracy {held_out:.4f}; wrote {weights} (SHA-256 {digest})")
    if (out / "manifest.toml").is_file():
        write_manifest_figures(out, digest, held_out)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
