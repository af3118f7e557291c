"""A request's pixels are bounded together, and big photos are scaled down once decoded: what a worker
and Redis hold per request is bounded whatever was uploaded."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.service.conftest import start_api
from tests.service.helpers import b64, encode


@pytest.fixture(scope="module")
def budget_api(service_tmp) -> Iterator[str]:
    api, base = start_api(service_tmp, "api-pixel-budget", max_request_pixels="1000000", photo_max_side="256")
    yield base
    api.stop()


def request(*images: Image.Image, outputs: tuple[str, ...] = ("heatmap",)) -> dict:
    return {
        "model": "lenet5-shapes",
        "methods": [{"name": "gradcam"}],
        "outputs": list(outputs),
        "images": [b64(encode(image)) for image in images],
    }


def test_images_past_the_request_budget_together_are_413_naming_the_one_that_passed_it(budget_api):
    square = Image.new("RGB", (800, 800), (200, 30, 30))  # 640,000 pixels: one fits, two do not
    with httpx.Client(base_url=budget_api, timeout=60) as http:
        one = http.post("/explain?wait=30", json=request(square))
        assert one.status_code == 200 and one.json()["state"] == "succeeded", one.text
        two = http.post("/explain", json=request(square, square))
        assert two.status_code == 413, two.text
        assert two.json()["error"]["code"] == "payload_too_large" and two.json()["error"]["field"] == "images[1]"
        assert (
            http.post(
                "/predict", json={"model": "lenet5-shapes", **{"images": request(square, square)["images"]}}
            ).status_code
            == 413
        )


def test_a_big_photo_is_scaled_down_keeping_its_aspect_and_its_overlay_has_that_size(budget_api):
    wide = Image.new("RGB", (1000, 500), (30, 30, 200))
    with httpx.Client(base_url=budget_api, timeout=60) as http:
        done = http.post("/explain?wait=30", json=request(wide, outputs=("overlay",)))
        assert done.status_code == 200 and done.json()["state"] == "succeeded", done.text
        overlay = http.get(done.json()["result"]["images"][0]["maps"][0]["overlay_url"])
        assert Image.open(io.BytesIO(overlay.content)).size == (256, 128)
