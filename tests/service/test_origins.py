"""Cross-origin requests from browser pages: closed by default (app/origins.py), open to listed origins."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.service.conftest import start_api
from tests.service.helpers import b64, encode, shape_photos

EVIL = "http://evil.example"
GOOD = "http://app.example"


def explain_body() -> dict:
    return {"model": "lenet5-shapes", "methods": [{"name": "gradcam"}], "images": [b64(encode(shape_photos(1)[0]))]}


def refused(response: httpx.Response) -> bool:
    return (
        response.status_code == 403
        and response.json()["error"]["code"] == "origin_not_allowed"
        and response.json()["error"]["field"] == "Origin"
    )


def test_state_changing_requests_from_other_origins_are_refused_when_cors_is_closed(client):
    assert refused(client.post("/explain", json=explain_body(), headers={"Origin": EVIL}))
    photo = encode(shape_photos(1)[0])
    form = client.post(  # what a hostile page's <form> sends: multipart, no preflight
        "/explain",
        files=[("images", ("a.png", photo, "image/png"))],
        data={"options": json.dumps({"model": "lenet5-shapes", "methods": [{"name": "gradcam"}]})},
        headers={"Origin": EVIL},
    )
    assert refused(form)
    assert refused(client.delete("/jobs/" + "0" * 32, headers={"Origin": EVIL}))
    assert refused(client.post("/explain", json=explain_body(), headers={"Origin": "null"}))
    own = str(client.base_url).rstrip("/")
    assert client.post("/explain?wait=30", json=explain_body(), headers={"Origin": own}).status_code == 200
    assert client.post("/explain?wait=30", json=explain_body()).status_code == 200, "no Origin: not a browser"
    read = client.get("/models", headers={"Origin": EVIL})
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
    preflight = client.options("/explain", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


@pytest.fixture(scope="module")
def open_api(service_tmp) -> Iterator[str]:
    api, base = start_api(service_tmp, "api-cors-open", cors_origins=GOOD)
    yield base
    api.stop()


def test_a_listed_origin_gets_cors_and_others_stay_out(open_api):
    with httpx.Client(base_url=open_api, timeout=60) as http:
        preflight = http.options(
            "/explain",
            headers={
                "Origin": GOOD,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == GOOD
        served = http.post("/explain?wait=30", json=explain_body(), headers={"Origin": GOOD})
        assert served.status_code == 200 and served.headers["access-control-allow-origin"] == GOOD
        assert refused(http.post("/explain", json=explain_body(), headers={"Origin": EVIL}))
        denied = http.options("/explain", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in denied.headers
