"""What a worker process holds: networks, OoD heads (verified), the layers layer methods may use."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from models.registry import BUNDLED, ModelRegistry
from models.shapes import UNSEEN, generate
from workers.model_host import ModelHost
from workers.train_ood import HELD_OUT_SEED, OOD_SEED, auroc, uniform_noise


def test_layers_are_the_spatial_modules_that_run_once():
    host = ModelHost(ModelRegistry())
    assert host.layers("lenet5-shapes") == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2"]
    layers = host.layers("efficientnet-lite0")
    assert "_blocks.15" in layers and "_conv_head" in layers
    assert "_swish" not in layers and "_blocks.3._swish" not in layers  # called more than once


def test_the_committed_ood_head_loads_onto_the_served_classifier():
    host = ModelHost(ModelRegistry())
    ood = host.ood_net("lenet5-shapes")
    assert ood is not None and ood.underlying is host.network("lenet5-shapes")
    assert host.ood_net("efficientnet-lite0") is None
    scores = ood.ood_score(torch.randn(4, 3, 32, 32))
    assert scores.shape == (4,) and bool((scores.abs() <= 1 + 1e-6).all())


def test_the_committed_ood_head_separates_uniform_noise_not_yet_unseen_shapes():
    """The figures of docs/models.md: AUROC of the OoD score, 1,000 held-out shapes against 1,000 of each."""
    registry = ModelRegistry()
    host, manifest = ModelHost(registry), registry.manifest("lenet5-shapes")
    ood = host.ood_net("lenet5-shapes")
    assert float(ood.feature_mean.abs().sum()) > 0, "trained on centred features"
    with torch.inference_mode():
        inliers = ood.ood_score(torch.from_numpy(generate(1000, HELD_OUT_SEED).normalised()))
        noise = ood.ood_score(uniform_noise(1000, manifest))
        heart = ood.ood_score(torch.from_numpy(generate(1000, OOD_SEED, shapes=UNSEEN).normalised()))
    assert auroc(inliers, noise) >= 0.9  # measured 0.913
    assert 0.6 <= auroc(inliers, heart) < 0.9  # measured 0.666: short of 0.9, docs/models.md says why


def test_an_ood_head_with_the_wrong_hash_is_refused_and_the_model_serves_without_it(tmp_path):
    folder = tmp_path / "lenet"
    shutil.copytree(BUNDLED / "lenet5-shapes", folder)
    manifest = folder / "manifest.toml"
    text = manifest.read_text()
    manifest.write_text(re.sub(r'(\[ood_head\][^\[]*sha256 = ")[0-9a-f]{64}', r"\g<1>" + "1" * 64, text))
    host = ModelHost(ModelRegistry([folder]))
    host.load_all()
    assert host.served == ["lenet5-shapes"] and host.ood_net("lenet5-shapes") is None
    why = host.capabilities("lenet5-shapes").unavailable["rise_plus"]
    assert "OoD head" in why and "SHA-256" in why


def test_auroc():
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])) == 0.5


def test_a_network_too_small_for_a_team_of_threads_runs_its_jobs_on_one():
    """LeNet-5's forward pass gains nothing from a second thread (measured ~1.07x on 2 cores, against the
    1.3x a team must bring): its jobs run on one torch thread, and the caller's count comes back after."""
    host = ModelHost(ModelRegistry(), "cpu", ["lenet5-shapes"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        host.load_all()
        with host.threads("lenet5-shapes"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_models_load_on_a_thread_that_has_ended_when_load_all_returns(monkeypatch):
    """Its OpenMP pool goes with it (``ModelHost.load_all``); what it raised beyond a model's own failure
    reaches the caller."""
    import threading

    seen: list[threading.Thread] = []

    def load_each(self: ModelHost) -> None:
        seen.append(threading.current_thread())
        raise RuntimeError("not a model's failure")

    monkeypatch.setattr(ModelHost, "_load_each", load_each)
    host = ModelHost(ModelRegistry(), "cpu", ["lenet5-shapes"])
    with pytest.raises(RuntimeError, match="not a model's failure"):
        host.load_all()
    assert len(seen) == 1 and seen[0] is not threading.current_thread() and not seen[0].is_alive()
