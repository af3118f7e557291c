"""``xai explain``: local files explained without a server, through the job runner, the maps written as PNGs."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from models.shapes import CLASSES, generate
from tests.service.helpers import encode


def xai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300)


def test_local_files_are_explained_with_the_methods_asked(tmp_path):
    shapes = generate(2, seed=11)
    photos = []
    for index, pixels in enumerate(shapes.images):
        path = tmp_path / f"shape{index}.png"
        path.write_bytes(encode(Image.fromarray(pixels)))
        photos.append(str(path))
    out = tmp_path / "maps"
    done = xai(
        "explain", *photos, "--model", "lenet5-shapes", "--method", "gradient", "--method", "gradcam",
        "--method", "rise:num_masks=300,tolerance=0.02", "--top-k", "2", "--out", str(out),
        "--sheet", str(tmp_path / "sheet.png"), "--quality", "sparseness,deletion_auc", "--quality-steps", "4",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for index, label in enumerate(shapes.labels):
        assert f"shape{index}: {CLASSES[int(label)]} [{int(label)}]" in done.stdout, "the top class first"
    written = sorted(path.name for path in out.iterdir() if path.suffix == ".png")
    assert len(written) == 2 * 3 * 2 * 2, written  # photos x methods x classes x (heatmap, overlay)
    summary = json.loads((out / "summary.json").read_text())
    assert [photo["photo"] for photo in summary["photos"]] == ["shape0", "shape1"]
    first = summary["photos"][0]
    assert first["predictions"][0]["label"] == CLASSES[int(shapes.labels[0])]
    assert set(first["timings_ms"]) == {"gradient", "gradcam", "rise"} and len(first["maps"]) == 3 * 2
    assert all((out / entry["heatmap"]).is_file() for entry in first["maps"])
    rise = [entry for entry in first["maps"] if entry["method"] == "rise"]
    assert all(0 < entry["masks_used"] <= 300 for entry in rise), "the job's result, as the service gives it"
    assert summary["methods"][2]["params"]["tolerance"] == 0.02
    assert all(set(entry["quality"]) == {"sparseness", "deletion_auc"} for entry in first["maps"])
    assert "deletion_auc" in done.stdout and "↓" in done.stdout, "each map's scores printed, with which way is better"
    with Image.open(out / written[0]) as image:
        assert image.size == (32, 32), "at the photo's size"
    with Image.open(tmp_path / "sheet.png") as sheet:  # 2 methods, 2 photos of 2 rows each
        assert sheet.size[0] == 3 * (160 + 4) + 4 and sheet.size[1] > 4 * 32
    assert "rise" in done.stdout and " ms" in done.stdout, "each method's time (a terminal also gets a progress bar)"


def test_a_method_that_does_not_run_or_does_not_exist_is_refused(tmp_path):
    refused = xai("explain", "--model", "lenet5-shapes", "--method", "attention_rollout", "--out", str(tmp_path))
    assert refused.returncode != 0 and "computes no attention" in refused.stderr
    unknown = xai("explain", "--model", "lenet5-shapes", "--method", "lime", "--out", str(tmp_path))
    assert unknown.returncode != 0 and "unknown method 'lime'" in unknown.stderr
    bad = xai("explain", "--model", "lenet5-shapes", "--method", "rise:num_masks=-3", "--out", str(tmp_path))
    assert bad.returncode != 0 and "num_masks" in bad.stderr and "greater than" in bad.stderr
    unknown_param = xai("explain", "--model", "lenet5-shapes", "--method", "gradcam:steps=3", "--out", str(tmp_path))
    assert unknown_param.returncode != 0 and "steps" in unknown_param.stderr
    missing = xai("explain", str(tmp_path / "nope.png"), "--model", "lenet5-shapes", "--out", str(tmp_path))
    assert missing.returncode != 0 and "nope.png" in missing.stderr
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    broken = xai("explain", str(not_image), "--model", "lenet5-shapes", "--out", str(tmp_path))
    assert broken.returncode != 0 and "notes" in broken.stderr and "image" in broken.stderr


def test_explicit_targets_are_explained_and_checked(tmp_path):
    out = tmp_path / "maps"
    done = xai("explain", "--model", "lenet5-shapes", "--method", "gradient", "--target", "3,7", "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [entry["target"] for entry in summary["photos"][0]["maps"]] == [3, 7]
    refused = xai("explain", "--model", "lenet5-shapes", "--target", "10", "--out", str(out))
    assert refused.returncode != 0 and "out of range" in refused.stderr
