"""A worker loads its models on its own schedule and serves only those that loaded.

Two extra model folders beside the bundled lenet5-shapes: one whose factory raises, one whose
factory takes 8 s (twice Celery's ``worker_proc_alive_timeout``: loading in the child's start-up hook
would get the child killed and restarted in a loop).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from models.registry import BUNDLED
from tests.service.conftest import RedisServer, service_env, start_api, start_worker, wait_until, worker_beats
from tests.service.helpers import b64, encode, poll, shape_photos

pytestmark = pytest.mark.slow
PHOTO = b64(encode(shape_photos(1)[0]))
FACTORIES = """
import time

from models.lenet5 import LeNet5


def slow_lenet(num_classes: int):
    time.sleep(8)
    return LeNet5(num_classes)


def broken_lenet(num_classes: int):
    raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
"""


def model_folder(root: Path, name: str, factory: str) -> None:
    folder = root / name
    shutil.copytree(BUNDLED / "lenet5-shapes", folder)
    (folder / "ood_head.pt").unlink()
    text = (folder / "manifest.toml").read_text()
    text = text.replace('name = "lenet5-shapes"', f'name = "{name}"')
    text = text.replace('architecture = "models.lenet5:LeNet5"', f'architecture = "user_factories:{factory}"')
    (folder / "manifest.toml").write_text(text.split("[ood_head]")[0])


@pytest.fixture
def model_dirs(tmp_path: Path) -> tuple[str, str]:
    users = tmp_path / "user-models"
    model_folder(users, "slow-lenet", "slow_lenet")
    model_folder(users, "broken-lenet", "broken_lenet")
    code = tmp_path / "code"
    code.mkdir()
    (code / "user_factories.py").write_text(FACTORIES)
    return f"{BUNDLED},{users}", str(code)


def test_a_model_that_fails_to_load_is_not_served_and_the_others_are(tmp_path, model_dirs):
    dirs, code = model_dirs
    server = RedisServer(tmp_path)
    server.start()
    worker = start_worker(tmp_path, "worker", server.url, model_dirs=dirs, pythonpath=code)
    api, base = start_api(tmp_path, "api", redis_url=server.url, model_dirs=dirs)
    try:
        log = worker.log.read_text()
        assert "Timed out waiting for UP message" not in log and "Process 'ForkPoolWorker" not in log, log[-2000:]
        with httpx.Client(base_url=base, timeout=60) as http, redis.Redis.from_url(server.url) as client:
            beat = next(iter(worker_beats(client).values()))
            assert sorted(beat["models"]) == ["efficientnet-lite0", "lenet5-shapes", "slow-lenet", "vit-shapes"]
            assert "no kernel image" in beat["failed"]["broken-lenet"]
            ready = http.get("/readyz").json()
            assert ready["ready"] and ready["models"]["broken-lenet"] == 0 and ready["models"]["slow-lenet"] == 1

            broken = http.get("/models/broken-lenet").json()
            assert broken["workers"] == [] and "no kernel image" in next(iter(broken["load_errors"].values()))
            refused = http.post(
                "/explain", json={"model": "broken-lenet", "methods": [{"name": "gradient"}], "images": [PHOTO]}
            )
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
            assert (
                refused.json()["error"]["code"] == "no_worker"
                and "no kernel image" in refused.json()["error"]["message"]
            )
            predict = http.post("/predict", json={"model": "broken-lenet", "images": [PHOTO]})
            assert predict.status_code == 503 and predict.json()["error"]["code"] == "no_worker"

            for model in ("slow-lenet", "lenet5-shapes"):
                job = http.post(
                    "/explain?wait=30", json={"model": model, "methods": [{"name": "gradcam"}], "images": [PHOTO]}
                )
                assert job.json()["state"] == "succeeded", job.text
            queued = client.llen("xai.model.broken-lenet")
            assert queued == 0, "nothing was queued for the broken model"

        def health(**settings: str) -> subprocess.CompletedProcess:
            env = service_env(redis_url=server.url, model_dirs=dirs, **settings)
            command = [sys.executable, "-m", "app.cli", "worker-health"]
            return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

        # A model that failed to load is reported, not a reason to restart the worker (it would fail again).
        reported = health()
        assert reported.returncode == 0 and "failed to load ['broken-lenet']" in reported.stdout, reported
        healthy = health(worker_models="lenet5-shapes,slow-lenet")
        assert healthy.returncode == 0 and "healthy" in healthy.stdout, healthy
        missing = health(worker_models="lenet5-shapes,ghost")  # a model the worker neither serves nor tried
        assert missing.returncode == 1 and "unhealthy" in missing.stdout, missing
    finally:
        api.stop()
        worker.stop()
        server.stop()


def test_jobs_sent_while_a_slow_model_loads_wait_and_run(tmp_path, model_dirs):
    dirs, code = model_dirs
    server = RedisServer(tmp_path)
    server.start()
    api, base = start_api(tmp_path, "api", redis_url=server.url, model_dirs=dirs)
    worker = start_worker(
        tmp_path, "worker", server.url, wait=False, model_dirs=dirs, pythonpath=code, worker_models="slow-lenet"
    )
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            loading = http.post(
                "/explain", json={"model": "slow-lenet", "methods": [{"name": "gradient"}], "images": [PHOTO]}
            )
            assert loading.status_code == 503 and loading.json()["error"]["code"] == "no_worker"
            wait_until(lambda: http.get("/models/slow-lenet").json()["workers"], 90, "the slow model never loaded")
            job = http.post(
                "/explain", json={"model": "slow-lenet", "methods": [{"name": "gradient"}], "images": [PHOTO]}
            )
            assert poll(http, job.json()["job_id"], 60)["state"] == "succeeded"
        assert "Timed out waiting for UP message" not in worker.log.read_text()
    finally:
        api.stop()
        worker.stop()
        server.stop()
