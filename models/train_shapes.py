"""Train LeNet5 on the synthetic shapes and write the ``lenet5-shapes`` weights.

    python -m models.train_shapes [--epochs 20] [--train-count 60000] [--out models/zoo/lenet5-shapes]

Deterministic (seeded data and initialisation); a few minutes on two CPU cores. Prints the
held-out accuracy and writes the weights' SHA-256 and the accuracy into the model's manifest.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.lenet5 import LeNet5
from models.loading import sha256_of
from models.shapes import CLASSES, generate

TRAIN_SEED, TEST_SEED = 1, 3  # TEST_SEED's images are the held-out set everywhere
EPOCHS, TRAIN_COUNT = 20, 60_000  # what produced the committed weights
ZOO_FOLDER = Path(__file__).resolve().parent / "zoo" / "lenet5-shapes"


def accuracy(network: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    network.eval()
    with torch.inference_mode():
        predicted = torch.cat([network(inputs[i : i + batch]).argmax(1) for i in range(0, len(inputs), batch)])
    return float((predicted == labels).float().mean())


def train(epochs: int, train_count: int, seed: int = 0, log: bool = True) -> tuple[LeNet5, float]:
    """Returns the network and its accuracy on 10,000 held-out images."""
    torch.manual_seed(seed)
    data = generate(train_count, TRAIN_SEED)
    inputs, labels = torch.from_numpy(data.normalised()), torch.from_numpy(data.labels)
    held_out = generate(10_000, TEST_SEED)
    test_inputs, test_labels = torch.from_numpy(held_out.normalised()), torch.from_numpy(held_out.labels)
    network = LeNet5(num_classes=len(CLASSES))
    optimiser = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = -(-train_count // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
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
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--train-count", type=int, default=TRAIN_COUNT)
    parser.add_argument("--out", type=Path, default=ZOO_FOLDER)
    args = parser.parse_args(argv)
    network, held_out = train(args.epochs, args.train_count)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "lenet5-shapes.pt"
    torch.save(network.state_dict(), weights)
    digest = sha256_of(weights)
    print(f"held-out accuracy {held_out:.4f}; wrote {weights} (SHA-256 {digest})")
    if (args.out / "manifest.toml").is_file():
        write_manifest_figures(args.out, digest, held_out)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
