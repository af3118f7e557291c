"""``xai serve`` takes its main settings as options too."""

from __future__ import annotations

import subprocess
import sys

import httpx

from models.registry import BUNDLED
from tests.service.conftest import Process, free_port, service_env, wait_until


def test_serve_binds_the_port_and_serves_the_model_dirs_it_is_given(tmp_path):
    port = free_port()
    env = service_env()  # no XAI_ setting: the options are what bind and serve
    folder = BUNDLED / "lenet5-shapes"
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--model-dirs", str(folder)]
    api = Process(command, env, tmp_path / "serve.log")
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 90, f"xai serve --port {port} did not answer")
        models = httpx.get(f"http://127.0.0.1:{port}/models", timeout=10).json()
        assert [model["name"] for model in models] == ["lenet5-shapes"]
    finally:
        api.stop()


def test_serve_help_lists_its_options():
    shown = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0
    for option in ("--host", "--port", "--redis-url", "--model-dirs"):
        assert option in shown.stdout


def test_openapi_writes_where_it_is_told(tmp_path):
    from app.cli import OPENAPI

    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "openapi", "--out", str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "spec.json").read_text() == OPENAPI.read_text()
