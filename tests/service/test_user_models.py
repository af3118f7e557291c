"""Users' own models, in every format, served end to end in both modes beside the bundled ones; the
broken ones unavailable with their errors while the others serve (tests/user_models.py writes them)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from models.lenet5 import LeNet5
from models.preprocessing import preprocess
from models.registry import BUNDLED, ModelRegistry
from tests.service.conftest import RedisServer, start_api, start_worker
from tests.service.helpers import b64, encode, shape_photos
from tests.user_models import BROKEN, GOOD, MULTI_LABEL, SPATIAL, lenet_state, write_user_models

PHOTOS = [b64(encode(photo)) for photo in shape_photos(2)]
PREPROCESSING = ModelRegistry().manifest("lenet5-shapes").preprocessing
SCRIPTED_ONLY_MISSING = {"gradcam", "guided_gradcam", "layer_gradient_x_activation", "deconvolution", "guided_backprop"}


@pytest.fixture(scope="module")
def user_root(service_tmp: Path) -> Path:
    return write_user_models(service_tmp / "user-models")


@pytest.fixture(scope="module", params=["embedded", "celery"])
def user_api(request: pytest.FixtureRequest, service_tmp: Path, user_root: Path) -> Iterator[str]:
    dirs = f"{BUNDLED},{user_root}"
    processes = []
    if request.param == "embedded":
        api, base = start_api(service_tmp, "api-user-models", model_dirs=dirs)
    else:
        (service_tmp / "redis-user-models").mkdir(exist_ok=True)
        redis_server = RedisServer(service_tmp / "redis-user-models")
        redis_server.start()
        processes.append(start_worker(service_tmp, "worker-user-models", redis_server.url, model_dirs=dirs))
        api, base = start_api(service_tmp, "api-user-models-celery", redis_url=redis_server.url, model_dirs=dirs)
    yield base
    for process in [api, *processes]:
        process.stop()
    if request.param == "celery":
        redis_server.stop()


def raw_maps(job: dict) -> dict[tuple[int, str], np.ndarray]:
    found = {}
    for image in job["result"]["images"]:
        for entry in image["maps"]:
            raw = entry["raw"]
            values = np.frombuffer(base64.b64decode(raw["data"]), dtype="<f2").reshape(raw["shape"])
            found[(image["index"], entry["method"])] = values.astype(np.float32)
    return found


def explain(http: httpx.Client, model: str, methods: list[str]) -> dict:
    body = {
        "model": model,
        "methods": [{"name": name} for name in methods],
        "images": PHOTOS,
        "targets": [3, 7],
        "outputs": ["raw"],
    }
    response = http.post("/explain?wait=60", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "succeeded", job
    return job


def test_every_format_classifies_and_explains_as_the_model_it_was_made_from(user_api):
    """Each folder holds lenet5-shapes's weights: predictions agree to float precision, maps to float16's
    (the raw maps travel as float16: 3 significant digits, so 2e-3 of the map's own range)."""
    with httpx.Client(base_url=user_api, timeout=90) as http:
        methods = ["gradient", "integrated_gradients", "occlusion", "gradcam"]
        reference = explain(http, "lenet5-shapes", methods)
        expected = raw_maps(reference)
        for model in GOOD:
            usable = [m for m in methods if not (model == "script-lenet" and m in SCRIPTED_ONLY_MISSING)]
            job = explain(http, model, usable)
            for mine, theirs in zip(job["result"]["images"], reference["result"]["images"], strict=True):
                got = [(p["class_id"], p["probability"]) for p in mine["predictions"]]
                want = [(p["class_id"], p["probability"]) for p in theirs["predictions"]]
                assert [c for c, _ in got] == [c for c, _ in want], model
                np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-5)
            for key, values in raw_maps(job).items():
                scale = float(np.abs(expected[key]).max()) or 1.0
                np.testing.assert_allclose(values, expected[key], atol=2e-3 * scale, err_msg=f"{model} {key}")


def test_the_models_show_what_they_can_do(user_api):
    with httpx.Client(base_url=user_api, timeout=30) as http:
        scripted = http.get("/models/script-lenet").json()
        assert scripted["available"] and scripted["methods"] is not None
        attention = {"attention_rollout", "attention_gradient"}
        assert set(scripted["unavailable_methods"]) == SCRIPTED_ONLY_MISSING | attention | {"rise_plus"}
        assert "TorchScript" in scripted["unavailable_methods"]["gradcam"]
        assert "OoD head" in scripted["unavailable_methods"]["rise_plus"]
        assert {"gradient", "integrated_gradients", "occlusion", "rise"} <= set(scripted["methods"])
        assert scripted["layers"] == {} and scripted["default_layer"] is None

        folder = http.get("/models/folder-lenet").json()
        assert folder["default_layer"] == "features.3"
        assert "features.3" in folder["layers"]["gradcam"] and "fc" not in folder["layers"]["gradcam"]
        bundled = http.get("/models/lenet5-shapes").json()
        assert set(bundled["unavailable_methods"]) == attention and "rise_plus" in bundled["methods"]
        assert "computes no attention" in bundled["unavailable_methods"]["attention_rollout"]


@pytest.mark.parametrize("method", ["gradcam", "guided_backprop", "layer_gradient_x_activation"])
def test_a_method_that_does_not_run_on_a_model_is_a_422_naming_it(user_api, method):
    with httpx.Client(base_url=user_api, timeout=30) as http:
        body = {"model": "script-lenet", "methods": [{"name": "gradient"}, {"name": method}], "images": PHOTOS[:1]}
        response = http.post("/explain", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("method_unavailable", "methods[1].name")
    assert "TorchScript" in error["message"]


def test_broken_models_are_unavailable_with_their_errors_and_the_others_serve(user_api):
    with httpx.Client(base_url=user_api, timeout=30) as http:
        listed = {entry["name"]: entry for entry in http.get("/models").json()}
        assert set(BROKEN) | set(GOOD) | {"lenet5-shapes"} <= set(listed)
        assert all(listed[name]["available"] for name in GOOD)
        manifest, factory = listed["broken-manifest"], listed["broken-factory"]
        assert not manifest["available"] and "gradcam_layr" in manifest["error"] and manifest["version"] is None
        assert not factory["available"] and "needs a GPU" in factory["error"] and factory["version"] == "1.0"

        detail = http.get("/models/broken-manifest").json()
        assert "gradcam_layr" in detail["load_errors"]["manifest"] and detail["workers"] == []
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"]
        failed = ready.json()["failed"]
        assert "gradcam_layr" in str(failed["broken-manifest"]) and "needs a GPU" in str(failed["broken-factory"])

        for name, words in (("broken-manifest", "gradcam_layr"), ("broken-factory", "needs a GPU")):
            body = {"model": name, "methods": [{"name": "gradient"}], "images": PHOTOS[:1]}
            response = http.post("/explain", json=body)
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert (error["code"], error["field"]) == ("no_worker", "model") and words in error["message"]


def test_a_multi_label_model_reads_its_scores_with_a_sigmoid(user_api):
    """Predictions are sigmoid(score) per class, and Occlusion's map is the drop of the target's sigmoid
    when each 8x8 window is occluded (by 0, the default reference) — computed here by hand. Tolerance:
    probabilities are rounded to 6 places; maps travel as float16 (2e-3 of their range)."""
    network = LeNet5(10)
    network.load_state_dict(lenet_state())
    inputs = torch.stack([torch.from_numpy(preprocess(photo, PREPROCESSING)) for photo in shape_photos(2)])
    with torch.no_grad():
        chances = torch.sigmoid(network(inputs))
        wanted_maps = torch.zeros(2, 32, 32)
        for top in range(0, 32, 8):
            for left in range(0, 32, 8):
                occluded = inputs.clone()
                occluded[:, :, top : top + 8, left : left + 8] = 0
                drop = chances[:, 3] - torch.sigmoid(network(occluded))[:, 3]
                wanted_maps[:, top : top + 8, left : left + 8] = drop[:, None, None]
    body = {
        "model": MULTI_LABEL,
        "methods": [{"name": "occlusion", "params": {"window": [8, 8]}}],
        "images": PHOTOS,
        "targets": [3, 3],
        "outputs": ["raw"],
    }
    with httpx.Client(base_url=user_api, timeout=60) as http:
        job = http.post("/explain?wait=60", json=body).json()
    assert job["state"] == "succeeded", job
    for image in job["result"]["images"]:
        row = image["index"]
        for prediction in image["predictions"]:
            assert prediction["probability"] == pytest.approx(float(chances[row, prediction["class_id"]]), abs=2e-6)
    for (row, _), values in raw_maps(job).items():
        scale = float(wanted_maps[row].abs().max())
        np.testing.assert_allclose(values, wanted_maps[row].numpy(), atol=2e-3 * scale + 1e-6)


def cell_cover(low: float, high: float, cells: int) -> np.ndarray:
    """Per cell [i/cells, (i+1)/cells), the share of it inside [low, high]."""
    return np.array([max(0.0, min(high, (i + 1) / cells) - max(low, i / cells)) * cells for i in range(cells)])


MASK = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)  # grey levels over the 5x5 output


def mask_cells() -> np.ndarray:
    """MASK's mean over each cell of the 5x5 output: each pixel repeated 5x5 (40x40), then 8x8 blocks averaged."""
    return np.kron(MASK / 255.0, np.ones((5, 5))).reshape(5, 8, 5, 8).mean(axis=(1, 3))


def reference_gradient(network: torch.nn.Module, inputs: torch.Tensor, target: int, options: dict):
    """TorchRay's saliency with its backward gradient written out: the one-hot seed spread over the positions
    (``get_backward_gradient``), limited to the box's cells or weighted by the mask's, or the pointing gradient
    (``exp(y_t)`` normalised, ``get_pointing_gradient``); the gradient's largest magnitude over channels."""
    x = inputs.clone().requires_grad_(True)
    scores = network(x)
    seed = torch.zeros_like(scores)
    weights = torch.ones(scores.shape[-2:], dtype=torch.float64)
    if options.get("box") is not None:
        x0, y0, x1, y1 = options["box"]
        weights = torch.from_numpy(np.outer(cell_cover(y0, y1, 5), cell_cover(x0, x1, 5)))
    if options.get("mask") is not None:
        weights = torch.from_numpy(mask_cells())
    pointing = options.get("pointing", False)
    for row in range(len(x)):
        values = weights.float()
        if pointing:
            values = values * torch.exp(scores[row, target].detach())
            values = values / values.sum()
        seed[row, target] = values
    scores.backward(seed)
    return x.grad.abs().amax(dim=1)


@pytest.mark.parametrize(
    "spatial",
    [
        None,
        {"box": [0.1, 0.0, 0.55, 0.7]},
        {"pointing": True},
        {"box": [0.5, 0.5, 1.0, 1.0], "pointing": True},
        {"mask": b64(encode(Image.fromarray(MASK)))},
    ],
    ids=["sum", "box", "pointing", "box+pointing", "mask"],
)
def test_a_model_scoring_every_position_is_explained_over_the_region_asked(user_api, user_root, spatial):
    """The gradient map against TorchRay's computation written out (float16 maps: 2e-3 of their range)."""
    from models.loading import import_factory

    network = import_factory("net:FCN", user_root / SPATIAL)(num_classes=10)
    network.load_state_dict(torch.load(user_root / SPATIAL / "weights.pt", weights_only=True))
    network.eval()
    inputs = torch.stack([torch.from_numpy(preprocess(photo, PREPROCESSING)) for photo in shape_photos(2)])
    body = {
        "model": SPATIAL,
        "methods": [{"name": "gradient"}],
        "images": PHOTOS,
        "targets": [4, 4],
        "outputs": ["raw"],
    }
    if spatial is not None:
        body["spatial"] = spatial
    with httpx.Client(base_url=user_api, timeout=60) as http:
        job = http.post("/explain?wait=60", json=body).json()
    assert job["state"] == "succeeded", job
    options = spatial or {}
    wanted = reference_gradient(network, inputs, 4, options)
    for (row, _), values in raw_maps(job).items():
        scale = float(wanted[row].abs().max())
        np.testing.assert_allclose(values, wanted[row].numpy(), atol=2e-3 * scale)


def test_spatial_options_are_refused_for_a_model_with_one_score_per_class(user_api):
    body = {
        "model": "lenet5-shapes",
        "methods": [{"name": "gradient"}],
        "images": PHOTOS,
        "spatial": {"pointing": True},
    }
    bad_box = {**body, "model": SPATIAL, "spatial": {"box": [0.5, 0.2, 0.4, 0.9]}}
    black = {**body, "model": SPATIAL, "spatial": {"mask": b64(encode(Image.new("L", (8, 8))))}}
    garbage = {**body, "model": SPATIAL, "spatial": {"mask": "not base64!"}}
    with httpx.Client(base_url=user_api, timeout=60) as http:
        refused, invalid = http.post("/explain", json=body), http.post("/explain", json=bad_box)
        for mask in (black, garbage):
            answer = http.post("/explain", json=mask)
            assert answer.status_code == 422 and answer.json()["error"]["field"] == "spatial.mask", answer.text
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "spatial"
    assert invalid.status_code == 422 and invalid.json()["error"]["field"].startswith("spatial")
