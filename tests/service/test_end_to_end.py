"""Every method over HTTP, in both modes: submit, poll, read maps and PNGs."""

from __future__ import annotations

import json

import httpx
import numpy as np

from core.methods import METHODS
from models.shapes import generate
from tests.service.helpers import b64, encode, png, poll, raw_map, shape_photos

QUICK = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 4},
    "occlusion": {"window": [4, 4], "strides": [2, 2]},
    "rise": {"num_masks": 300},
    "rise_plus": {"num_masks": 300},
}


def methods_for(client: httpx.Client, model: str) -> list[str]:
    """The methods that run on the model, as GET /models/{name} lists them once a worker loaded it."""
    return client.get(f"/models/{model}").json()["methods"]


def test_every_method_explains_two_images_through_a_multipart_upload(client):
    photos = shape_photos(2)
    names = methods_for(client, "lenet5-shapes")
    options = {
        "model": "lenet5-shapes",
        "methods": [{"name": name, "params": QUICK.get(name, {})} for name in names],
        "targets": {"top_k": 2},
        "outputs": ["raw", "heatmap", "overlay"],
        "seed": 7,
    }
    files = [("images", (f"{i}.png", encode(photo), "image/png")) for i, photo in enumerate(photos)]
    response = client.post("/explain", files=files, data={"options": json.dumps(options)})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['job_id']}"
    assert job["state"] in {"queued", "running"}
    view = poll(client, job["job_id"])
    assert view["state"] == "succeeded", view["error"]
    assert view["progress"] == 1.0
    assert set(view["timings_ms"]) == {"predict", "quality", *names}  # quality: the free scores, by default
    result = view["result"]
    assert len(result["images"]) == 2
    for image in result["images"]:
        predicted = [p["class_id"] for p in image["predictions"]]
        probabilities = [p["probability"] for p in image["predictions"]]
        assert (
            len(predicted) == 5
            and probabilities == sorted(probabilities, reverse=True)
            and sum(probabilities) <= 1.0001
        )
        maps = image["maps"]
        assert [(m["method"], m["target"]) for m in maps] == [(n, t) for n in names for t in predicted[:2]]
        for item in maps:
            values = raw_map(item["raw"])
            assert values.shape == (32, 32) and np.isfinite(values).all(), item["method"]
            assert png(client, item["heatmap_url"]).size == (32, 32)
            assert png(client, item["overlay_url"]).size == (32, 32)


def test_json_with_base64_images_and_explicit_targets(client):
    photo = shape_photos(1)[0]
    body = {
        "model": "lenet5-shapes",
        "methods": [{"name": "gradcam", "params": {"layer": "conv1"}}, {"name": "guided_backprop"}],
        "targets": [[3, 5]],
        "outputs": ["raw"],
        "images": [b64(encode(photo, "JPEG"))],
    }
    response = client.post("/explain?wait=60", json=body)
    assert response.status_code == 200, response.text
    maps = response.json()["result"]["images"][0]["maps"]
    assert [(m["method"], m["target"], m["label"]) for m in maps] == [
        ("gradcam", 3, "cross"),
        ("gradcam", 5, "star"),
        ("guided_backprop", 3, "cross"),
        ("guided_backprop", 5, "star"),
    ]
    assert all(m["heatmap_url"] is None and m["overlay_url"] is None for m in maps)


def test_the_default_target_is_the_predicted_class_and_overlays_keep_the_photo_size(client):
    photo = shape_photos(1)[0].resize((96, 64))
    response = client.post(
        "/explain?wait=60",
        json={
            "model": "lenet5-shapes",
            "methods": [{"name": "gradcam"}],
            "outputs": ["overlay"],
            "images": [b64(encode(photo))],
        },
    )
    image = response.json()["result"]["images"][0]
    assert [m["target"] for m in image["maps"]] == [image["predictions"][0]["class_id"]]
    assert png(client, image["maps"][0]["overlay_url"]).size == (96, 64)
    assert image["maps"][0]["heatmap_url"] is None


def test_maps_over_http_equal_the_library_on_the_same_input(client, registry):
    """The service adds transport, not arithmetic: its raw map is the library's (to float16)."""
    import torch

    from models.preprocessing import preprocess
    from workers.xai import GradCAM

    photo = shape_photos(1)[0]
    response = client.post(
        "/explain?wait=60",
        json={
            "model": "lenet5-shapes",
            "methods": [{"name": "gradcam"}],
            "targets": [2],
            "outputs": ["raw"],
            "images": [b64(encode(photo))],
        },
    )
    served = raw_map(response.json()["result"]["images"][0]["maps"][0]["raw"]).astype(np.float32)
    network, manifest = registry.network("lenet5-shapes"), registry.manifest("lenet5-shapes")
    x = torch.from_numpy(preprocess(photo, manifest.preprocessing))[None]
    local = GradCAM(network, manifest.gradcam_layer)(x, 2)[0, 0].numpy()
    np.testing.assert_allclose(served, local, rtol=2e-3, atol=2e-3 * float(np.abs(local).max()))


def test_each_map_carries_the_quality_scores_asked_for(client):
    asked = ["sparseness", "deletion_auc", "insertion_auc", "confidence_change"]
    request = {
        "model": "lenet5-shapes",
        "methods": [{"name": "gradient"}, {"name": "gradcam"}],
        "targets": {"top_k": 2},
        "images": [b64(encode(photo)) for photo in shape_photos(2)],
        "quality": asked,
        "quality_options": {"steps": 4, "insertion_reference": "mean"},
    }
    view = poll(client, client.post("/explain", json=request).json()["job_id"])
    assert view["state"] == "succeeded", view["error"]
    catalogue = {score["name"]: score for score in client.get("/quality").json()}
    for image in view["result"]["images"]:
        assert len(image["maps"]) == 4
        for item in image["maps"]:
            assert list(item["quality"]) == asked
            for name, value in item["quality"].items():
                low, high = catalogue[name]["range"]
                assert low <= value <= high, (name, value)
    assert view["timings_ms"]["quality"] > 0
    assert catalogue["deletion_auc"]["better"] == "lower" and catalogue["insertion_auc"]["better"] == "higher"
    assert not catalogue["pointing_game"]["per_map"], "an offline score: xai evaluate"


def test_predict_answers_synchronously(client):
    photos = shape_photos(3)
    response = client.post(
        "/predict", json={"model": "lenet5-shapes", "top_k": 3, "images": [b64(encode(p)) for p in photos]}
    )
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert [len(i["predictions"]) for i in images] == [5, 5, 5]
    expected = generate(3, 3).labels.tolist()
    assert [i["predictions"][0]["class_id"] for i in images] == expected


def test_catalog(client):
    models = {m["name"]: m for m in client.get("/models").json()}
    assert models["efficientnet-lite0"]["num_classes"] == 1000
    assert models["lenet5-shapes"]["input_size"] == [32, 32]
    detail = client.get("/models/lenet5-shapes").json()
    assert detail["labels"][0] == "circle"
    assert "conv2" in detail["layers"]["gradcam"] and "fc1" not in detail["layers"]["gradcam"]
    assert detail["default_layer"] == "conv2" and detail["available"]
    attention = {name for name, method in METHODS.items() if method.uses_attention}
    assert set(detail["unavailable_methods"]) == attention, "a CNN has no attention; everything else runs"
    assert set(detail["methods"]) == set(METHODS) - attention
    assert 0 < detail["forward_ms"] < 10_000, "a forward pass, measured by the worker"
    assert models["lenet5-shapes"]["available"] and models["lenet5-shapes"]["error"] is None
    methods = {m["name"]: m for m in client.get("/methods").json()}
    assert set(methods) == set(METHODS)
    assert methods["rise"]["defaults"]["num_masks"] == 6000
    assert methods["rise"]["parameters"]["properties"]["keep_probability"]["exclusiveMaximum"] == 1.0
    assert methods["gradcam"]["uses_layer"] and methods["rise_plus"]["needs_ood_head"]
    assert "num_masks forward passes" in methods["rise"]["cost"] and methods["gradient"]["cost"]


def test_health(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metrics = client.get("/metrics").text
    assert "xai_http_requests_total" in metrics and "xai_job_method_seconds_bucket" in metrics
    assert 'route="/explain"' in metrics, "requests are counted by their route template"


def test_a_finished_map_is_recoloured_on_request_and_only_its_own_forms_are_served(client):
    photo = shape_photos(1)[0]
    response = client.post(
        "/explain?wait=60",
        json={"model": "lenet5-shapes", "methods": [{"name": "gradcam"}], "images": [b64(encode(photo))]},
    )
    assert response.status_code == 200, response.text
    url = response.json()["result"]["images"][0]["maps"][0]["heatmap_url"]
    inferno = np.asarray(png(client, url).convert("RGB")).astype(int)
    gray = np.asarray(png(client, url + "?colormap=gray").convert("RGB")).astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert (inferno[..., 0] != inferno[..., 2]).any(), "the job's own colour map is not gray"
    assert np.array_equal(np.asarray(png(client, url).convert("RGB")), inferno), "drawn the same way again"
    missing = client.get(url + "?form=overlay")  # the job asked for heatmaps only
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "map_not_found"
    assert client.get(url + "?colormap=jet").status_code == 422
