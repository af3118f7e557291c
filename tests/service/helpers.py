"""Images and polling shared by the service tests."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
from PIL import Image

from models.shapes import generate

TERMINAL = {"succeeded", "failed", "cancelled"}


def shape_photos(count: int = 2, seed: int = 3) -> list[Image.Image]:
    return [Image.fromarray(image) for image in generate(count, seed).images]


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def poll(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/jobs/{job_id}").json()
        if view["state"] in TERMINAL:
            return view
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not finish: {view}")


def raw_map(raw: dict) -> np.ndarray:
    assert raw["dtype"] == "float16"
    return np.frombuffer(base64.b64decode(raw["data"]), dtype="<f2").reshape(raw["shape"])


def png(client: httpx.Client, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))
