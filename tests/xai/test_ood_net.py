"""OoDNet: shapes and modes, the classifier left as found, training, saving, and OoD detection.

Detection: a seeded LeNet5 and its OoDNet trained together (``train_underlying=True``, 10 epochs, ~2 s)
on a synthetic in-distribution set — four smooth patterns, each in its own colour, with pixel noise —
then scored on held-out in-distribution images against uniform noise, AUROC by ranks. Measured over
seeds 0-3 (network, heads, data order): 1.000 every time after training; before it, fresh heads gave
0.71, 0.01, 0.76, 0.15 (and 0.52 on the trained network, the case asserted). The test asserts >= 0.9
after training and < 0.9 before: far from both groups, so float noise cannot flip it.
With only the heads trained on a frozen network (the default), the uncentred max-cosine score did
*not* separate noise on this set (0.23-0.57); on lenet5-shapes centring the features does (the
committed head, tests/workers/test_model_host.py).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.lenet5 import LeNet5
from tests.nets import seeded
from tests.xai.test_contract import assert_same_state, state_of
from workers.xai import OoDNet, features_of_pass


def patterns() -> torch.Tensor:
    r = torch.linspace(-1, 1, 32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([xx, yy, torch.sin(3 * xx) * torch.sin(3 * yy), 1 - 2 * (xx**2 + yy**2)])  # (4, 32, 32)


def synthetic(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, 3, 32, 32) images and (count,) labels of 4 classes: a pattern in a class colour, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=g)
    palette = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]]).view(4, 3, 1, 1)
    colour = palette[labels] * 0.8 + 0.2 * torch.randn(count, 3, 1, 1, generator=g)
    amplitude = 0.5 + torch.rand(count, 1, 1, 1, generator=g)
    images = amplitude * colour * patterns()[labels].unsqueeze(1) + 0.2 * torch.randn(count, 3, 32, 32, generator=g)
    return images, labels


def loader(count: int = 1024, seed: int = 0) -> DataLoader:
    images, labels = synthetic(count, seed)
    order = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True, generator=order, drop_last=True)


def uniform_noise(count: int, seed: int = 5) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 4 - 2


def auroc(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), from ranks (Mann-Whitney U)."""
    ranks = torch.cat([positives, negatives]).argsort().argsort().double() + 1
    n, m = len(positives), len(negatives)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


@functools.cache
def trained_ood_net() -> OoDNet:
    """A seeded LeNet5 and its OoDNet trained together on :func:`synthetic` (shared with test_rise_plus)."""
    torch.manual_seed(0)
    ood_net = OoDNet(seeded(LeNet5), 4)
    ood_net.train(loader(), nn.CrossEntropyLoss(), epoch=10, learning_rate=0.01, train_underlying=True)
    return ood_net


def test_in_distribution_scores_higher_than_uniform_noise():
    held_out, _ = synthetic(500, 1)
    trained = trained_ood_net()
    assert not trained.training and not trained.underlying.training
    with torch.no_grad():
        assert auroc(trained.ood_score(held_out), trained.ood_score(uniform_noise(500))) >= 0.9
        torch.manual_seed(0)
        untrained = OoDNet(trained.underlying, 4).eval()
        assert auroc(untrained.ood_score(held_out), untrained.ood_score(uniform_noise(500))) < 0.9


@torch.no_grad()
def test_outputs_in_each_mode(lenet, images):
    ood_net = OoDNet(lenet, 10)
    assert not ood_net.training, "a new OoDNet scores (eval mode)"
    scores = ood_net(images)
    assert scores.shape == (4, 10)
    assert float(scores.abs().max()) <= 1, "cosines"
    features = ood_net.features(images)
    expected = nn.functional.normalize(features, dim=1) @ nn.functional.normalize(ood_net.h.weight, dim=1).t()
    torch.testing.assert_close(scores, expected, rtol=1e-3, atol=1e-4)  # up to the 1e-4 in the norm
    torch.testing.assert_close(ood_net.ood_score(images), scores.amax(dim=1))
    ood_net.set_train(True)
    logits = ood_net(images)
    temperature = ood_net.temperature(features)
    assert temperature.shape == (4, 1) and bool(((temperature > 0) & (temperature < 1)).all())
    torch.testing.assert_close(logits, scores / temperature)
    assert ood_net.eval() is ood_net and not ood_net.training, "eval() still works beside the seed's train()"


def test_the_classifier_is_not_part_of_the_heads(lenet, images):
    ood_net = OoDNet(lenet, 10)
    assert ood_net.underlying is lenet and ood_net.num_classes == 10
    assert set(ood_net.state_dict()) == {
        "h.weight",
        "g_fc.weight",
        "g_fc.bias",
        "g_bn.weight",
        "g_bn.bias",
        "g_bn.running_mean",
        "g_bn.running_var",
        "g_bn.num_batches_tracked",
        "feature_mean",
    }
    lenet.train()
    ood_net.set_train(False)
    assert lenet.training, "switching the heads' mode leaves the classifier's alone"
    assert lenet.output_features is False
    ood_net(images)
    assert lenet.output_features is False, "output_features is put back after a forward pass"
    assert torch.equal(lenet(images), lenet.classify_features(ood_net.features(images)))


def test_output_features_is_put_back_when_the_classifier_raises(lenet, images):
    ood_net = OoDNet(lenet, 10)
    handle = lenet.fc2.register_forward_hook(lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        ood_net(images)
    handle.remove()
    assert lenet.output_features is False


def test_training_the_heads_leaves_the_classifier_as_found(lenet):
    lenet.train()
    lenet.conv1.weight.requires_grad_(False)
    before = state_of(lenet)
    modes_seen = []
    lenet.register_forward_pre_hook(lambda module, args: modes_seen.append(module.training))
    ood_net = OoDNet(lenet, 4)
    heads = {name: value.clone() for name, value in ood_net.state_dict().items()}
    losses = []
    ood_net.train(loader(256), nn.CrossEntropyLoss(), callbacks=lambda epoch, loss: losses.append(loss), epoch=2)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert modes_seen and not any(modes_seen), "the classifier runs in eval mode while the heads train"
    assert_same_state(before, state_of(lenet))  # frozen: same weights, same flags afterwards
    assert not ood_net.training
    assert not torch.equal(heads["h.weight"], ood_net.h.weight)


def test_train_underlying_trains_the_classifier_too_and_restores_its_flags(lenet):
    lenet.fc1.weight.requires_grad_(False)
    weights = lenet.conv1.weight.clone()
    ood_net = OoDNet(lenet, 4)
    ood_net.train(loader(128), nn.CrossEntropyLoss(), epoch=1, train_underlying=True, learning_rate=0.01)
    assert not torch.equal(weights, lenet.conv1.weight)
    assert not lenet.training and not lenet.fc1.weight.requires_grad and lenet.conv1.weight.requires_grad


def test_prepare_train_steps_the_learning_rate_per_epoch(lenet):
    ood_net = OoDNet(lenet, 4)
    optimizer, scheduler = ood_net.prepare_train(learning_rate=0.5, lr_base_factor=0.1, lr_epoch_denom=2)
    assert len(optimizer.param_groups[0]["params"]) == 5  # h, g_fc weight and bias, g_bn weight and bias
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005])
    assert len(ood_net.get_train_parameters(train_underlying=True)) == 5 + len(list(lenet.parameters()))


def test_heads_are_saved_and_loaded_alone(lenet, images, tmp_path):
    ood_net = OoDNet(lenet, 10)
    ood_net.save(tmp_path / "heads.pt")
    torch.manual_seed(123)
    other = OoDNet(lenet, 10)
    assert not torch.equal(other(images), ood_net(images))
    other.load(tmp_path / "heads.pt")
    assert torch.equal(other(images), ood_net(images))
    with pytest.raises(ValueError, match=r"h.weight of shape \(10, 84\), expected \(4, 84\)"):
        OoDNet(lenet, 4).load(tmp_path / "heads.pt")


def test_feature_centring_is_off_by_default_and_measured_when_asked(lenet, images, tmp_path):
    data = loader(256)
    plain = OoDNet(lenet, 4)
    plain.train(data, epoch=1, learning_rate=0.01)
    assert torch.equal(plain.feature_mean, torch.zeros(84)), "MindSpore's h: uncentred"
    centred = OoDNet(lenet, 4)
    centred.train(data, epoch=1, learning_rate=0.01, center_features=True)
    with torch.no_grad():
        expected = torch.cat([centred.features(batch) for batch, _ in data]).mean(0)
        torch.testing.assert_close(centred.feature_mean, expected)
        features = centred.features(images)
        weights = centred.h.weight / (centred.h.weight.norm(dim=1, keepdim=True) + 1e-4)
        shifted = features - expected
        cosine = (shifted / (shifted.norm(dim=1, keepdim=True) + 1e-4)) @ weights.t()
        torch.testing.assert_close(centred.eval()(images), cosine)
    centred.save(tmp_path / "centred.pt")
    assert torch.equal(OoDNet(lenet, 4).load(tmp_path / "centred.pt").feature_mean, centred.feature_mean)
    state = {k: v for k, v in plain.state_dict().items() if k != "feature_mean"}
    torch.save(state, tmp_path / "mindspore.pt")  # heads saved without a mean: m = 0
    assert torch.equal(OoDNet(lenet, 4).load(tmp_path / "mindspore.pt").feature_mean, torch.zeros(84))
    with pytest.raises(TypeError, match="center_features must be a bool"):
        OoDNet(lenet, 4).train(data, epoch=1, center_features="yes")
    with pytest.raises(ValueError, match="no images"):
        OoDNet(lenet, 4).fit_feature_mean([])


# ---- errors ----


class NoFeatures(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def with_attributes(**attributes) -> nn.Module:
    network = NoFeatures()
    for name, value in attributes.items():
        setattr(network, name, value)
    return network


@pytest.mark.parametrize(
    ("underlying", "num_classes", "error", "message"),
    [
        (NoFeatures(), 10, AttributeError, "underlying must have the attributes num_features"),
        (with_attributes(num_features=8), 10, AttributeError, r"missing \['output_features'\]"),
        (with_attributes(output_features=False), 10, AttributeError, r"missing \['num_features'\]"),
        (with_attributes(num_features=8.0, output_features=False), 10, TypeError, "underlying.num_features must be"),
        (with_attributes(num_features=0, output_features=False), 10, ValueError, "underlying.num_features must be >="),
        (with_attributes(num_features=8, output_features=0), 10, TypeError, "underlying.output_features must be a"),
        ("lenet", 10, TypeError, "underlying must be a torch.nn.Module"),
        (with_attributes(num_features=8, output_features=False), 0, ValueError, "num_classes must be >= 1"),
        (with_attributes(num_features=8, output_features=False), "10", TypeError, "num_classes must be an int"),
    ],
)
def test_bad_arguments(underlying, num_classes, error, message):
    with pytest.raises(error, match=message):
        OoDNet(underlying, num_classes)


def test_features_of_the_wrong_shape_are_refused(images):
    ood_net = OoDNet(with_attributes(num_features=8, output_features=False), 3)
    with pytest.raises(ValueError, match=r"underlying must return \(N, num_features=8\) features"):
        ood_net(images)


def test_bad_training_arguments(lenet):
    ood_net = OoDNet(lenet, 4)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ood_net.train(loader(64), "cross-entropy")
    with pytest.raises(TypeError, match="callbacks must be a callable"):
        ood_net.train(loader(64), callbacks=[1])
    with pytest.raises(ValueError, match="epoch must be >= 1"):
        ood_net.train(loader(64), epoch=0)
    with pytest.raises(TypeError, match="train_underlying must be a bool"):
        ood_net.prepare_train(train_underlying="yes")


def test_the_score_of_features_is_the_max_cosine_and_follows_changed_weights(lenet):
    """``score_features`` is ``cosine(...).amax(1)`` rearranged (the row's length taken out of the max,
    the unit weights kept between calls): equal up to float32 rounding (1e-6 on values within [-1, 1]),
    also after the weights change under it."""
    ood = OoDNet(lenet, 10)
    features = torch.randn(32, ood.h.weight.shape[1])
    with torch.no_grad():
        ood.feature_mean.copy_(torch.randn_like(ood.feature_mean) * 0.1)
        torch.testing.assert_close(ood.score_features(features), ood.cosine(features).amax(dim=1), atol=1e-6, rtol=0)
        ood.h.weight.mul_(-1.0)  # an in-place change: the kept unit weights must not be reused
        torch.testing.assert_close(ood.score_features(features), ood.cosine(features).amax(dim=1), atol=1e-6, rtol=0)
    weighted = ood.score_features(features.requires_grad_())  # with autograd: computed afresh, differentiable
    weighted.sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


class _Rescaled(LeNet5):
    """Its features with ``output_features`` set are not what its plain pass classifies (scaled first)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = super().forward(x) if self.output_features else None
        if features is not None:
            return features
        self.output_features = True
        try:
            inner = super().forward(x)
        finally:
            self.output_features = False
        return self.classify_features(inner * 2.0)


def test_the_feature_module_is_the_one_whose_output_the_plain_pass_classifies(lenet, images):
    """LeNet5's relu4: its output is the features, and a hook on it during any pass gives the heads'
    features of that pass. A network whose plain pass classifies something else has no feature module."""
    ood = OoDNet(lenet, 10)
    assert ood.feature_module(images[:2]) == "relu4"
    with features_of_pass(lenet, "relu4", len(images)) as found:
        lenet(images)
    assert len(found) == 1
    torch.testing.assert_close(found[0], ood.features(images))
    assert not lenet.output_features, "the check left the flag as it found it"
    assert OoDNet(seeded(_Rescaled, 10), 10).feature_module(images[:2]) is None
