"""``xai evaluate`` and the function under it: scores per method on images with ground truth."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
import torch.nn.functional as F
from PIL import Image

from core.methods import call
from workers.commands import load_model
from workers.evaluate import SANITY_THRESHOLD, Subject, evaluate, shapes_images


def edges(context, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A "method" that ignores the network: the gradient magnitude of the image, the same for every target."""
    grey = inputs.mean(1, keepdim=True)
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    dx = F.conv2d(grey, sobel[None, None], padding=1)
    dy = F.conv2d(grey, sobel.T[None, None], padding=1)
    return (dx**2 + dy**2).sqrt().expand(-1, targets.shape[1], -1, -1)


def test_the_randomisation_check_fails_a_method_that_ignores_the_network_and_passes_gradcam():
    host = load_model("lenet5-shapes", None)
    rows = evaluate(host, "lenet5-shapes", [call("gradcam"), Subject("edges", edges)], shapes_images(60))
    by_name = {row.name: row.scores for row in rows}
    assert list(by_name) == ["(the image centre)", "(a random map)", "(the object's mask)", "gradcam", "edges"]
    assert by_name["edges"]["randomisation"] > 0.99, "its maps do not change at all"
    assert by_name["edges"]["randomisation"] >= SANITY_THRESHOLD
    assert by_name["gradcam"]["randomisation"] < SANITY_THRESHOLD
    assert by_name["edges"]["class_sensitivity"] > 0.99, "the same map for every class"
    assert by_name["gradcam"]["class_sensitivity"] < by_name["edges"]["class_sensitivity"]
    # the ground truth baseline is the best there is at pointing and IoSR
    assert by_name["(the object's mask)"]["pointing_game"] == 1.0 and by_name["(the object's mask)"]["iosr"] == 1.0
    assert by_name["(the object's mask)"]["deletion_auc"] < by_name["(a random map)"]["deletion_auc"]
    assert by_name["(the object's mask)"]["insertion_auc"] > by_name["(a random map)"]["insertion_auc"]


def test_the_command_writes_a_table_and_a_plot_per_score(tmp_path):
    out = tmp_path / "evaluate"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "evaluate", "--model", "lenet5-shapes", "--shapes", "40",
         "--method", "gradient", "--method", "rise:num_masks=200", "--steps", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = (out / "table.md").read_text()
    assert "| rise (num_masks=200) |" in table and "deletion_auc ↓" in table and "pointing_game ↑" in table
    assert "ranked two ways" in table
    document = json.loads((out / "table.json").read_text())
    assert [row["name"] for row in document["rows"]][3:] == ["gradient", "rise (num_masks=200)"]
    assert document["better"]["insertion_auc"] == "higher"
    for score in ("deletion_auc", "insertion_auc", "sparseness", "complexity", "pointing_game", "iosr",
                  "class_sensitivity", "randomisation"):  # fmt: skip
        with Image.open(out / f"{score}.png") as plot:
            assert plot.width > 300 and plot.height > 100
    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", "evaluate", "--model", "lenet5-shapes", "--method", "attention_rollout"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0 and "attention" in refused.stderr
