"""Write docs/api.md from a real run: start the service (embedded), call every endpoint, record.

python docs/api_examples.py
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.shapes import generate  # noqa: E402


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shorten(value: Any, key: str = "") -> Any:
    """Keep examples readable: long base64 strings and lists are cut, saying so."""
    if isinstance(value, dict):
        return {k: _shorten(v, k) for k, v in value.items()}
    if isinstance(value, list):
        head = [_shorten(v) for v in value[:3]]
        return [*head, f"... {len(value) - 3} more"] if len(value) > 4 else [_shorten(v) for v in value]
    if isinstance(value, str) and len(value) > 80:
        return f"<{len(value)} characters of base64>" if key in ("data", "") else value[:77] + "..."
    return value


def main() -> None:
    port = _port()
    env = {**os.environ, "XAI_PORT": str(port)}
    env.pop("XAI_REDIS_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    sections: list[str] = []
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            for _ in range(300):
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            buffer = io.BytesIO()
            Image.fromarray(generate(1, 3).images[0]).save(buffer, format="PNG")
            image = base64.b64encode(buffer.getvalue()).decode()

            def record(title: str, method: str, path: str, body: dict | None = None, note: str = "") -> dict:
                response = http.request(method, path, json=body)
                shown = response.json() if "json" in response.headers.get("content-type", "") else None
                lines = [f"## {title}", ""]
                if note:
                    lines += [note, ""]
                lines += ["```http", f"{method} {path}" + ("\ncontent-type: application/json" if body else "")]
                if body is not None:
                    lines += ["", json.dumps(_shorten(body), indent=2)]
                lines += [
                    "```",
                    "",
                    f"`{response.status_code}`"
                    + (f", `Location: {response.headers['location']}`" if "location" in response.headers else ""),
                    "",
                ]
                if shown is not None:
                    lines += ["```json", json.dumps(_shorten(shown), indent=2), "```", ""]
                else:
                    lines += [f"({response.headers.get('content-type')}, {len(response.content)} bytes)", ""]
                sections.append("\n".join(lines))
                return shown or {}

            explain = {
                "model": "lenet5-shapes",
                "images": [image],
                "targets": {"top_k": 2},
                "methods": [{"name": "gradcam"}, {"name": "rise", "params": {"num_masks": 500}}],
                "outputs": ["raw", "heatmap", "overlay"],
                "seed": 1,
                "quality": ["sparseness", "complexity", "deletion_auc", "insertion_auc"],
                "quality_options": {"steps": 8},
            }
            queued = record(
                "POST /explain",
                "POST",
                "/explain",
                explain,
                "Queues a job (202). Multipart works too: `images` files and an `options` JSON field.",
            )
            job_id = queued["job_id"]
            while http.get(f"/jobs/{job_id}").json()["state"] not in ("succeeded", "failed"):
                time.sleep(0.1)
            view = record("GET /jobs/{id}", "GET", f"/jobs/{job_id}")
            url = view["result"]["images"][0]["maps"][0]["heatmap_url"]
            record(
                "GET /jobs/{id}/maps/{image}/{method}/{target}.png",
                "GET",
                url,
                note="`?form=overlay` serves the map over the photo at its own size.",
            )
            record(
                "POST /explain?wait=",
                "POST",
                "/explain?wait=30",
                {**explain, "methods": [{"name": "guided_backprop"}], "outputs": ["heatmap"], "quality": []},
                "Waits up to `wait` seconds (capped by `XAI_WAIT_CAP_S`) and answers 200 with the result.",
            )
            slow = http.post(
                "/explain",
                json={
                    **explain,
                    "model": "efficientnet-lite0",
                    "methods": [{"name": "rise", "params": {"num_masks": 20000}}],
                },
            ).json()
            record(
                "DELETE /jobs/{id}",
                "DELETE",
                f"/jobs/{slow['job_id']}",
                note="Cancels a queued job at once, a running one at its next batch.",
            )
            record("POST /predict", "POST", "/predict", {"model": "lenet5-shapes", "top_k": 3, "images": [image]})
            record("GET /models", "GET", "/models")
            record("GET /models/{name}", "GET", "/models/lenet5-shapes")
            record("GET /methods", "GET", "/methods")
            record("GET /quality", "GET", "/quality")
            record("GET /healthz", "GET", "/healthz")
            record("GET /readyz", "GET", "/readyz")
            record(
                "An error",
                "POST",
                "/explain",
                {**explain, "targets": [12]},
                "Every 4xx has this shape; `field` names the part of the request at fault.",
            )
            metrics = http.get("/metrics").text
            sections.append(
                "## GET /metrics\n\n```text\n"
                + "\n".join(line for line in metrics.splitlines() if line.startswith("xai_") and "bucket" not in line)[
                    :2500
                ]
                + "\n```\n"
            )
    finally:
        server.terminate()
        server.wait(30)
    header = (
        "# HTTP API by example\n\nGenerated by `python docs/api_examples.py` from a real run of the service "
        "(embedded mode). Long base64 strings and lists are shortened. The schema of every body is in "
        "`openapi/openapi.json`.\n"
    )
    (ROOT / "docs" / "api.md").write_text(header + "\n" + "\n".join(sections))
    print("wrote docs/api.md")


if __name__ == "__main__":
    main()
