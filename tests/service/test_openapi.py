"""The committed OpenAPI document matches the app, a generated client works, the API has no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

from app.cli import OPENAPI, openapi_text
from tests.service.conftest import KEY_A
from tests.service.helpers import b64, encode, shape_photos

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_openapi_document_is_current():
    assert OPENAPI.read_text() == openapi_text(), "openapi/openapi.json is stale: run `xai openapi`"


def test_the_api_imports_no_torch_in_either_mode():
    script = """
import sys, warnings
warnings.simplefilter("ignore")
from fastapi.testclient import TestClient
from app.main import create_app
from core.settings import Settings
with TestClient(create_app(Settings(redis_url="redis://127.0.0.1:1/0"))) as client:
    assert client.get("/methods").status_code == 200
    assert client.get("/models/lenet5-shapes").status_code == 200
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("no torch")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no torch" in done.stdout


def test_a_generated_client_authenticates_explains_and_polls(keyed_api, tmp_path):
    """Against a service that asks for keys: the document declares the schemes, the client sends the key."""
    api, _ = keyed_api
    generator = Path(sys.executable).with_name("openapi-python-client")
    done = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(OPENAPI),
            "--meta",
            "none",
            "--config",
            str(OPENAPI.with_name("client-config.yaml")),
            "--output-path",
            str(tmp_path / "xai_client"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (tmp_path / "xai_client" / "client.py").is_file(), done.stdout + done.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("xai_client")
        explain = importlib.import_module("xai_client.api.explain.create_explanation")
        get_job = importlib.import_module("xai_client.api.jobs.get_job")
        list_models = importlib.import_module("xai_client.api.catalog.list_models")
        get_map_png = importlib.import_module("xai_client.api.jobs.get_map_png")
        models = importlib.import_module("xai_client.models")
    finally:
        sys.path.remove(str(tmp_path))

    anonymous = client_module.Client(base_url=api, timeout=None, raise_on_unexpected_status=False)
    with anonymous:
        assert list_models.sync_detailed(client=anonymous).status_code == 401
    with client_module.AuthenticatedClient(base_url=api, token=KEY_A, timeout=None) as client:
        assert "lenet5-shapes" in [m.name for m in list_models.sync(client=client)]
        body = models.ExplainJSON(
            model="lenet5-shapes",
            methods=[
                models.GradCAMCall(name="gradcam"),
                models.SmoothGradCall(name="smoothgrad", params=models.SmoothGradParams(samples=4)),
            ],
            images=[b64(encode(shape_photos(1)[0]))],
            targets=models.TopK(top_k=2),
        )
        response = explain.sync_detailed(client=client, body=body)
        assert response.status_code == 202
        job = response.parsed
        deadline = time.monotonic() + 60
        while (view := get_job.sync(client=client, job_id=job.job_id)).state.value not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert view.state.value == "succeeded"
        maps = view.result.images[0].maps
        assert [m.method for m in maps] == ["gradcam", "gradcam", "smoothgrad", "smoothgrad"]
        assert models.IntegratedGradientsParams().steps == 32, "every method's defaults reach the client"
        png = client.get_httpx_client().get(maps[0].heatmap_url)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        drawn = get_map_png.sync(client=client, job_id=job.job_id, image=0, method="gradcam", target=maps[0].target)
        assert drawn is not None and drawn.payload.read().startswith(b"\x89PNG"), "a File, not None"


def test_the_docs_pages_load_nothing_from_another_host(embedded_api):
    """Swagger UI and ReDoc, their scripts and styles served by the API itself: the pages work offline."""
    import re

    import httpx

    with httpx.Client(base_url=embedded_api, timeout=30) as http:
        for page in ("/docs", "/redoc"):
            html = http.get(page)
            assert html.status_code == 200 and "text/html" in html.headers["content-type"]
            assets = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', html.text)
            assert assets, page
            for asset in assets:
                assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
                fetched = http.get(asset)
                assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
            assert not re.search(r"https?://", html.text), f"{page} names another host"


def test_the_documents_example_requests_succeed(embedded_api):
    """What Swagger UI's "Try it out" sends: the JSON examples of POST /explain and /predict, and the
    multipart field's schema is in the document."""
    import json

    import httpx

    document = json.loads(OPENAPI.read_text())
    schemas = document["components"]["schemas"]
    with httpx.Client(base_url=embedded_api, timeout=60) as http:
        for path in ("/explain", "/predict"):
            content = document["paths"][path]["post"]["requestBody"]["content"]
            options = content["multipart/form-data"]["schema"]["properties"]["options"]
            assert options["contentSchema"]["$ref"].split("/")[-1] in schemas
            answer = http.post(
                path + ("?wait=30" if path == "/explain" else ""), json=content["application/json"]["example"]
            )
            assert answer.status_code == 200, answer.text
            body = answer.json()
            images = body["result"]["images"] if path == "/explain" else body["images"]
            assert images[0]["predictions"][0]["label"] == "square"
