"""``xai models check``: a user's folders checked as the service would load them (tests/user_models.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.methods import METHODS
from models.registry import BUNDLED
from tests.user_models import BROKEN, GOOD, MULTI_LABEL, SPATIAL, write_user_models
from workers.model_check import check


@pytest.fixture(scope="module")
def user_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_user_models(tmp_path_factory.mktemp("user-models"))


def xai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300)


def test_every_folder_is_reported_with_what_it_can_do(user_root):
    reports = {report.name: report for report in check([user_root])}
    assert set(reports) == set(GOOD) | set(BROKEN) | {MULTI_LABEL, SPATIAL}
    for name in (*GOOD, MULTI_LABEL, SPATIAL):
        report = reports[name]
        assert report.ok and report.error is None, (name, report)
        assert "SHA-256 matches" in report.summary["weights"]
        assert all(outcome.startswith("ok ") for outcome in report.methods.values()), report.methods
        assert set(report.methods) | set(report.unavailable) == set(METHODS)
    assert reports["folder-lenet"].default_layer == "features.3"
    assert "features.3" in reports["folder-lenet"].layers
    assert "gradcam" in reports["script-lenet"].unavailable and reports["script-lenet"].layers == []
    assert not reports["broken-manifest"].ok and "gradcam_layr" in reports["broken-manifest"].error
    assert not reports["broken-factory"].ok and "needs a GPU" in reports["broken-factory"].error


def test_the_command_exits_0_only_when_every_model_would_serve(user_root):
    good = xai("models", "check", str(BUNDLED / "lenet5-shapes"), str(user_root / "safe-lenet"))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "lenet5-shapes: ready to serve" in good.stdout and "rise_plus                    ok" in good.stdout

    mixed = xai("models", "check", str(user_root), "--json", "--no-run")
    assert mixed.returncode == 1
    reports = {report["name"]: report for report in json.loads(mixed.stdout)}
    assert reports["script-lenet"]["ok"] and reports["script-lenet"]["methods"]["gradient"] == "available"
    assert "Extra inputs are not permitted" in reports["broken-manifest"]["error"]

    missing = xai("models", "check", str(user_root / "nowhere"))
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_a_default_layer_that_cannot_serve_is_refused_naming_the_field(user_root, tmp_path):
    folder = tmp_path / "bad-layer"
    text = (user_root / "safe-lenet" / "manifest.toml").read_text().replace('"conv2"', '"fc1"')
    folder.mkdir()
    for item in (user_root / "safe-lenet").iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / "manifest.toml").write_text(text)
    (report,) = check([folder])
    assert not report.ok and "field 'gradcam_layer'" in report.error and "'fc1'" in report.error
