"""The bundled models trained on the shapes: vit-shapes's stated accuracy is measured from its committed
weights, and the pointing-game figures of docs/models.md are reproduced for the methods that take
seconds (the whole table: ``python -m bench.pointing_game``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from core.methods import call
from models.registry import BUNDLED
from models.shapes import UNSEEN, generate
from models.train_shapes import TEST_SEED, accuracy
from workers.evaluate import TOLERANCE
from workers.methods import build_explainer, explain
from workers.model_host import ModelHost
from workers.xai.quality import pointing_hits

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"
MODELS = ("lenet5-shapes", "vit-shapes")
QUICK = ("gradient", "input_x_gradient", "gradcam", "attention_rollout", "attention_gradient")


def stated_accuracy(model: str) -> float:
    return float(re.search(r"held-out accuracy ([0-9.]+)%", (BUNDLED / model / "manifest.toml").read_text())[1])


def documented_hit_rates() -> dict[str, dict[str, str]]:
    """The pointing-game table of docs/models.md: method -> model -> its cell."""
    lines = re.split(r"^#+ pointing game", DOCS.read_text(), maxsplit=1, flags=re.I | re.M)[1].splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    columns = [cell.strip().split(" ")[0] for cell in header.strip("|").split("|")[1:]]
    table: dict[str, dict[str, str]] = {}
    for line in lines[lines.index(header) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[cells[0].split(" ")[0]] = dict(zip(columns, cells[1:], strict=True))
    return table


@pytest.fixture(scope="module")
def host(registry) -> ModelHost:
    return ModelHost(registry, served=MODELS)


def test_vit_shapes_has_its_stated_accuracy(host):
    data = generate(10_000, TEST_SEED)
    measured = accuracy(host.network("vit-shapes"), torch.from_numpy(data.normalised()), torch.from_numpy(data.labels))
    assert stated_accuracy("vit-shapes") >= 95.0
    # As for lenet5-shapes: another CPU may flip the few images whose two best classes are within rounding.
    assert abs(measured * 100 - stated_accuracy("vit-shapes")) < 0.05


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", QUICK)
def test_the_documented_pointing_game_is_reproduced(host, model, method):
    """1,000 held-out images, true labels as targets. A hit is an argmax: an image whose map has two maxima
    within float rounding may flip on another CPU; 0.003 = 3 images of 1,000."""
    documented = documented_hit_rates()[method][model]
    capabilities = host.capabilities(model)
    if method in capabilities.unavailable:
        assert documented == "–"
        return
    data = generate(1000, TEST_SEED)
    inputs, labels = torch.from_numpy(data.normalised()), torch.from_numpy(data.labels)
    the_call = call(method)
    explainer = build_explainer(the_call, host.context(model, seed=0))
    maps = torch.cat(
        [
            explain(the_call, explainer, inputs[i : i + 100], labels[i : i + 100, None], lambda f: None)[:, 0]
            for i in range(0, 1000, 100)
        ]
    )
    measured = float(pointing_hits(maps, torch.from_numpy(data.masks), TOLERANCE).float().mean())
    assert abs(measured - float(documented)) <= 0.003, (model, method, measured, documented)


def test_the_vit_ood_head_has_its_documented_aurocs(host):
    """docs/models.md: 0.970 against uniform noise, 0.866 against the unseen heart (1,000 images each).
    Float rounding across CPUs moves a score by ~1e-7: 0.002 of AUROC is 2,000 of the million pairs."""
    from workers.train_ood import HELD_OUT_SEED, OOD_SEED, auroc, uniform_noise

    ood = host.ood_net("vit-shapes")
    manifest = host.manifest("vit-shapes")
    with torch.inference_mode():
        inliers = ood.ood_score(torch.from_numpy(generate(1000, HELD_OUT_SEED).normalised()))
        noise = ood.ood_score(uniform_noise(1000, manifest))
        heart = ood.ood_score(torch.from_numpy(generate(1000, OOD_SEED, shapes=UNSEEN).normalised()))
    assert abs(auroc(inliers, noise) - 0.970) <= 0.002
    assert abs(auroc(inliers, heart) - 0.866) <= 0.002
