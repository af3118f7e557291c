"""Every request a client can get wrong answers a 4xx with {"error": {"code", "message", "field"}}."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.service.conftest import start_api
from tests.service.helpers import b64, encode, poll, shape_photos

PHOTO = b64(encode(shape_photos(1)[0]))
# What no error message may carry: object reprs with heap addresses, file paths, Python internals.
LEAKS = re.compile(r"0x[0-9a-fA-F]{6,}|<[\w.]+ object|/(?:usr|home|work|tmp|srv|opt)/|site-packages|\.py\b")


def body(**change: object) -> dict:
    request = {"model": "lenet5-shapes", "methods": [{"name": "gradcam"}], "images": [PHOTO]}
    request.update(change)
    return request


def assert_error(response: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert error["message"] and "Traceback" not in error["message"]
    assert not LEAKS.search(error["message"]), f"the message shows the server's insides: {error['message']}"


def truncated_png() -> str:
    return b64(encode(shape_photos(1)[0])[:60])


def bomb() -> str:
    """A 1-bit 20000x20000 PNG: a few kilobytes that decode to 400 million pixels."""
    return b64(encode(Image.new("1", (20000, 20000))))


JSON_CASES = [
    (body(model="resnet"), 404, "unknown_model", "model"),
    (body(methods=[{"name": "lime"}]), 404, "unknown_method", "methods[0].name"),
    (
        body(methods=[{"name": "integrated_gradients", "params": {"steps": "many"}}]),
        422,
        "invalid_parameter",
        "methods[0].params.steps",
    ),
    (
        body(methods=[{"name": "gradient", "params": {"colour": 1}}]),
        422,
        "invalid_parameter",
        "methods[0].params.colour",
    ),
    (
        body(methods=[{"name": "rise", "params": {"keep_probability": 1.5}}]),
        422,
        "invalid_parameter",
        "methods[0].params.keep_probability",
    ),
    (
        body(methods=[{"name": "rise", "params": {"num_masks": 10**6}}]),
        422,
        "invalid_parameter",
        "methods[0].params.num_masks",
    ),
    (
        body(methods=[{"name": "occlusion", "params": {"window": [0, 4]}}]),
        422,
        "invalid_parameter",
        "methods[0].params.window[0]",
    ),
    (body(methods=[{"name": "gradcam", "params": {"layer": "fc1"}}]), 422, "unknown_layer", "methods[0].params.layer"),
    (body(methods=[{"name": "gradcam"}, {"name": "gradcam"}]), 422, "invalid_parameter", "methods[1].name"),
    (body(model="efficientnet-lite0", methods=[{"name": "rise_plus"}]), 422, "no_ood_head", "methods[0].name"),
    (body(targets=[10]), 422, "target_out_of_range", "targets[0]"),
    (body(targets=[-1]), 422, "target_out_of_range", "targets[0]"),
    (body(targets=[1, 2]), 422, "invalid_parameter", "targets"),
    (body(targets={"top_k": 11}), 422, "invalid_parameter", "targets.top_k"),
    (body(targets={"top_k": 0}), 422, "invalid_request", "targets.top_k"),
    (body(outputs=["svg"]), 422, "invalid_request", "outputs[0]"),
    (body(quality=["beauty"]), 422, "invalid_request", "quality[0]"),
    (body(quality="sparseness"), 422, "invalid_request", "quality"),
    (body(quality_options={"steps": 1}), 422, "invalid_request", "quality_options.steps"),
    (body(quality_options={"blur": 0}), 422, "invalid_request", "quality_options.blur"),
    (  # 13 methods x 10 targets x 255 steps x 2 curves: 66,000 passes for one image
        body(
            methods=[
                {"name": name}
                for name in (
                    "gradient",
                    "deconvolution",
                    "guided_backprop",
                    "input_x_gradient",
                    "integrated_gradients",
                    "smoothgrad",
                    "gradcam",
                    "guided_gradcam",
                    "occlusion",
                    "rise",
                )
            ],
            targets={"top_k": 10},
            quality=["deletion_auc", "insertion_auc"],
            quality_options={"steps": 256},
        ),
        422,
        "invalid_parameter",
        "quality_options.steps",
    ),
    (body(seed=-3), 422, "invalid_request", "seed"),
    (body(methods=[]), 422, "invalid_request", "methods"),
    ({"model": "lenet5-shapes", "images": [PHOTO]}, 422, "invalid_request", "methods"),
    (body(images=[]), 422, "invalid_request", "images"),
    (body(images=["not base64!"]), 422, "invalid_image", "images[0]"),
    (body(images=[b64(b"hello, world")]), 422, "invalid_image", "images[0]"),
    (body(images=[b64(b"")]), 422, "invalid_image", "images[0]"),
    (body(images=[PHOTO, truncated_png()]), 422, "invalid_image", "images[1]"),
    (body(images=[bomb()]), 422, "invalid_image", "images[0]"),
    (body(images=[PHOTO] * 17), 422, "invalid_request", "images"),
]


@pytest.mark.parametrize(("request_body", "status", "code", "field"), JSON_CASES)
def test_bad_json_requests(client, request_body, status, code, field):
    assert_error(client.post("/explain", json=request_body), status, code, field)


def test_rise_plus_without_a_head_is_refused_where_there_is_none(client):
    models = {m["name"]: m["has_ood_head"] for m in client.get("/models").json()}
    assert models["efficientnet-lite0"] is False


def test_bad_multipart_requests(client):
    png = encode(shape_photos(1)[0])
    files = [("images", ("a.png", png, "image/png"))]
    assert_error(client.post("/explain", files=files), 422, "invalid_request", "options")
    assert_error(client.post("/explain", files=files, data={"options": "{not json"}), 422, "invalid_request", "options")
    assert_error(
        client.post("/explain", files=files, data={"options": json.dumps({"model": "lenet5-shapes"})}),
        422,
        "invalid_request",
        "options.methods",
    )
    assert_error(
        client.post(
            "/explain",
            files=[("images", ("a.txt", b"text", "text/plain"))],
            data={"options": json.dumps({"model": "lenet5-shapes", "methods": [{"name": "gradient"}]})},
        ),
        422,
        "invalid_image",
        "images[0]",
    )


@pytest.mark.parametrize("path", ["/explain", "/predict"])
def test_deeply_nested_or_broken_json_is_a_4xx_naming_where_it_was(client, path):
    """Nested 100,000 deep, JSON recursed into a 500 in the form's options; now the parser's nesting
    limit answers, in the form and in a JSON body alike."""
    deep = "[" * 100_000 + "]" * 100_000
    files = [("images", ("a.png", encode(shape_photos(1)[0]), "image/png"))]
    assert_error(client.post(path, files=files, data={"options": deep}), 422, "invalid_request", "options")
    nested_model = '{"model": ' + "[" * 5_000 + "]" * 5_000 + "}"
    assert_error(client.post(path, files=files, data={"options": nested_model}), 422, "invalid_request", "options")
    for body in (deep.encode(), b'{"model": "\\ud800\xff"}', b'{"model": 1e999999, "images": []}'):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["field"], response.text


@pytest.mark.parametrize(
    "data", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, b"GIF89a" + b"\x00" * 10, b"\xff\xd8\xff"]
)
def test_unreadable_images_get_a_plain_message(client, data):
    """Pillow's own message names its buffer object (``<_io.BytesIO object at 0x7f...>``): never shown."""
    files = [("images", ("a.png", data, "image/png"))]
    options = {"options": json.dumps({"model": "lenet5-shapes", "methods": [{"name": "gradient"}]})}
    assert_error(client.post("/explain", files=files, data=options), 422, "invalid_image", "images[0]")
    assert_error(client.post("/explain", json=body(images=[b64(data)])), 422, "invalid_image", "images[0]")


def test_other_bodies_and_routes(client):
    assert_error(
        client.post("/explain", content=b"model=x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
        "Content-Type",
    )
    assert_error(
        client.post("/explain", content=b"{broken", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
        "body",
    )
    assert_error(client.get("/jobs/" + "0" * 32), 404, "job_not_found", "job_id")
    assert_error(client.get("/jobs/not-a-job"), 422, "invalid_request", "job_id")
    assert_error(client.get("/jobs/" + "0" * 32 + "/maps/0/gradcam/1.png"), 404, "job_not_found", "job_id")
    assert_error(client.delete("/jobs/" + "0" * 32), 404, "job_not_found", "job_id")
    assert_error(client.get("/models/resnet"), 404, "unknown_model", "name")
    assert_error(client.get("/methods/lime"), 404, "unknown_method", "name")
    assert_error(client.get("/nowhere"), 404, "not_found", "path")
    assert_error(client.put("/explain"), 405, "method_not_allowed", "method")
    assert_error(
        client.post("/predict", json={"model": "lenet5-shapes", "images": [b64(b"x")]}),
        422,
        "invalid_image",
        "images[0]",
    )


def test_a_finished_job_cannot_be_cancelled(client):
    job = client.post("/explain?wait=60", json=body()).json()
    assert job["state"] == "succeeded"
    assert_error(client.delete(f"/jobs/{job['job_id']}"), 409, "job_finished", "job_id")
    url = job["result"]["images"][0]["maps"][0]["heatmap_url"]
    target = job["result"]["images"][0]["maps"][0]["target"]
    assert_error(client.get(url.replace("/gradcam/", "/gradient/")), 404, "map_not_found", "method")
    assert_error(client.get(url.replace("/maps/0/", "/maps/1/")), 404, "map_not_found", "image")
    assert_error(client.get(url.replace(f"/{target}.png", f"/{target + 1}.png")), 404, "map_not_found", "target")
    assert_error(client.get(url + "?form=overlay"), 404, "map_not_found", "form")


@pytest.mark.parametrize(
    "image",
    [
        Image.new("P", (40, 30), 3),
        Image.new("L", (40, 30), 90),
        Image.new("LA", (40, 30), (90, 128)),
        Image.new("RGBA", (40, 30), (10, 200, 30, 128)),
        Image.new("I;16", (40, 30), 40000),
    ],
    ids=["palette", "grey", "grey+alpha", "rgba", "16-bit"],
)
def test_image_modes_are_converted(client, image):
    response = client.post("/explain?wait=60", json=body(images=[b64(encode(image))], outputs=["overlay"]))
    assert response.json()["state"] == "succeeded", response.text


def test_exif_orientation_is_applied():
    photo = shape_photos(1)[0].resize((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    from core.images import decode_image

    decoded = decode_image(encode(photo, "JPEG", exif=exif), max_bytes=10**6, max_pixels=10**6)
    assert decoded.size == (20, 40)


def test_an_animation_uses_its_first_frame(client):
    """A GIF of 1,000 frames: only the first is decoded."""
    frames = [Image.new("RGB", (32, 32), (255, 0, 0))] + [
        Image.new("RGB", (32, 32), (0, 0, i % 256)) for i in range(999)
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    from core.images import decode_image

    assert decode_image(buffer.getvalue(), max_bytes=10**6, max_pixels=10**6).getpixel((0, 0)) == (255, 0, 0)
    response = client.post("/explain?wait=60", json=body(images=[b64(buffer.getvalue())]))
    assert response.json()["state"] == "succeeded"


@pytest.fixture(scope="module")
def strict_api(service_tmp) -> Iterator[str]:
    """An embedded API with small limits and a short result TTL."""
    api, base = start_api(
        service_tmp,
        "api-strict",
        max_upload_bytes="4096",
        max_images="2",
        result_ttl_s="2",
        wait_cap_s="1",
        max_image_pixels="5000",
    )
    yield base
    api.stop()


def test_limits_and_expiry(strict_api):
    with httpx.Client(base_url=strict_api, timeout=30) as http:
        big = b64(encode(Image.effect_noise((64, 64), 50).convert("RGB")))
        assert_error(http.post("/explain", json=body(images=[big])), 413, "payload_too_large", "images[0]")
        wide = b64(encode(Image.new("RGB", (100, 100))))
        assert_error(http.post("/explain", json=body(images=[wide])), 422, "invalid_image", "images[0]")
        assert_error(http.post("/explain", json=body(images=[PHOTO] * 3)), 422, "invalid_request", "images")
        job = http.post("/explain?wait=30", json=body()).json()  # the wait is capped at 1 s
        view = poll(http, job["job_id"], timeout=10)
        assert view["state"] == "succeeded"
        url = view["result"]["images"][0]["maps"][0]["heatmap_url"]
        import time

        time.sleep(2.5)
        assert_error(http.get(f"/jobs/{job['job_id']}"), 404, "job_not_found", "job_id")
        assert "expired" in http.get(f"/jobs/{job['job_id']}").json()["error"]["message"]
        assert_error(http.get(url), 404, "job_not_found", "job_id")
