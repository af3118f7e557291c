"""The OoD-head command: from the synthetic shapes (bit for bit) and from an image folder."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from models.loading import sha256_of
from models.registry import BUNDLED, ModelRegistry
from models.shapes import CLASSES, generate
from workers import train_ood
from workers.xai import OoDNet


def test_the_committed_head_is_trained_again_bit_for_bit_by_its_command(tmp_path):
    train_ood.main(["--model", "lenet5-shapes", "--shapes", "--out", str(tmp_path)])
    text = (BUNDLED / "lenet5-shapes" / "manifest.toml").read_text()
    committed = re.search(r'\[ood_head\][^\[]*sha256 = "([0-9a-f]{64})"', text).group(1)
    assert sha256_of(tmp_path / "ood_head.pt") == committed


def image_folder(root, per_class: int = 6, classes=CLASSES):
    batch = generate(per_class * len(classes), seed=11)
    for index, (pixels, label) in enumerate(zip(batch.images, batch.labels, strict=True)):
        folder = root / classes[label % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((48, 40)).save(folder / f"{index}.png")  # resized back by the manifest
    return root


def test_heads_train_from_a_folder_of_images_named_by_label(tmp_path, capsys):
    folder = image_folder(tmp_path / "images")
    train_ood.main(["--model", "lenet5-shapes", "--images", str(folder), "--epochs", "2", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "epoch 2: loss" in printed and "AUROC in-distribution vs uniform noise" in printed
    assert re.search(r'sha256 = "[0-9a-f]{64}"', printed)
    registry = ModelRegistry()
    heads = OoDNet(registry.network("lenet5-shapes"), 10).load(tmp_path / "ood_head.pt")
    assert float(heads.feature_mean.abs().sum()) > 0, "centred by default"
    assert heads.ood_score(torch.zeros(2, 3, 32, 32)).shape == (2,)


def test_a_folder_that_is_not_a_label_or_holds_no_images_is_refused(tmp_path):
    (tmp_path / "bad" / "dragon").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"sub-folders \['dragon'\] are not labels of 'lenet5-shapes'"):
        train_ood.main(["--model", "lenet5-shapes", "--images", str(tmp_path / "bad"), "--out", str(tmp_path)])
    (tmp_path / "empty" / "circle").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images under"):
        train_ood.main(["--model", "lenet5-shapes", "--images", str(tmp_path / "empty"), "--out", str(tmp_path)])
