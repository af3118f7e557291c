"""Cancellation of a running job, readiness with and without workers, a broker that goes away."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.service.conftest import RedisServer, start_api, start_worker, wait_until
from tests.service.helpers import b64, encode, poll, shape_photos

PHOTO = b64(encode(shape_photos(1)[0]))


def test_a_running_rise_job_is_cancelled_between_batches(client):
    long_job = {
        "model": "efficientnet-lite0",
        "methods": [{"name": "rise", "params": {"num_masks": 20000}}],  # minutes of work on a CPU
        "images": [PHOTO],
    }
    job = client.post("/explain", json=long_job).json()

    def started() -> dict | None:
        view = client.get(f"/jobs/{job['job_id']}").json()
        return view if view["state"] == "running" and view["progress"] > 0 else None

    running = wait_until(started, 120, "the RISE job never reported progress")
    assert 0 < running["progress"] < 0.5
    cancelling = client.delete(f"/jobs/{job['job_id']}")
    assert cancelling.status_code == 202
    requested = time.monotonic()
    view = poll(client, job["job_id"], timeout=60)
    assert view["state"] == "cancelled"
    assert time.monotonic() - requested < 30
    assert view["result"] is None and view["progress"] < 1
    # The worker is free again: the next job runs.
    quick = client.post(
        "/explain?wait=60", json={"model": "lenet5-shapes", "methods": [{"name": "gradient"}], "images": [PHOTO]}
    )
    assert quick.json()["state"] == "succeeded"


def test_a_queued_job_is_cancelled_at_once(embedded_api):
    with httpx.Client(base_url=embedded_api, timeout=60) as http:
        blocker = http.post(
            "/explain",
            json={
                "model": "efficientnet-lite0",
                "images": [PHOTO],
                "methods": [{"name": "rise", "params": {"num_masks": 20000}}],
            },
        ).json()
        queued = http.post(
            "/explain", json={"model": "lenet5-shapes", "methods": [{"name": "gradient"}], "images": [PHOTO]}
        ).json()
        cancelled = http.delete(f"/jobs/{queued['job_id']}")
        assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
        http.delete(f"/jobs/{blocker['job_id']}")
        assert poll(http, blocker["job_id"], 60)["state"] == "cancelled"
        assert http.get(f"/jobs/{queued['job_id']}").json()["state"] == "cancelled"


@pytest.fixture
def lone_redis(service_tmp) -> RedisServer:
    server = RedisServer(service_tmp)
    server.start()
    yield server
    server.stop()


def test_ready_only_with_a_worker_and_a_broker(service_tmp, lone_redis):
    api, base = start_api(service_tmp, "api-no-worker", redis_url=lone_redis.url)
    worker = None
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            not_ready = http.get("/readyz")
            assert not_ready.status_code == 503 and int(not_ready.headers["Retry-After"]) > 0
            assert not_ready.json()["ready"] is False and not_ready.json()["workers"] == {}
            worker = start_worker(service_tmp, "worker-late", lone_redis.url, worker_models="lenet5-shapes")
            ready = http.get("/readyz")
            assert ready.status_code == 200
            assert [w["models"] for w in ready.json()["workers"].values()] == [["lenet5-shapes"]]

            lone_redis.stop()
            down = http.get("/readyz")
            assert down.status_code == 503 and "unreachable" in down.json()["broker"]
            refused = http.post(
                "/explain", json={"model": "lenet5-shapes", "methods": [{"name": "gradient"}], "images": [PHOTO]}
            )
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
            assert int(refused.headers["Retry-After"]) > 0

            lone_redis.start()  # an empty Redis on the same port: the worker reconnects and beats again
            wait_until(lambda: http.get("/readyz").status_code == 200, 60, "not ready after Redis came back")
            job = http.post(
                "/explain?wait=30",
                json={"model": "lenet5-shapes", "methods": [{"name": "gradient"}], "images": [PHOTO]},
            )
            assert job.status_code == 200 and job.json()["state"] == "succeeded"
    finally:
        api.stop()
        if worker is not None:
            worker.stop()


def test_a_full_embedded_queue_answers_503_with_retry_after(service_tmp):
    api, base = start_api(service_tmp, "api-tiny-queue", embedded_queue="1")
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            long_job = {
                "model": "lenet5-shapes",
                "methods": [{"name": "rise", "params": {"num_masks": 20000}}],
                "images": [PHOTO] * 16,
            }
            running = http.post("/explain", json=long_job)
            assert running.status_code == 202
            full = http.post("/explain", json=long_job)
            assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
            assert int(full.headers["Retry-After"]) > 0
            http.delete(f"/jobs/{running.json()['job_id']}")
            assert poll(http, running.json()["job_id"], 60)["state"] == "cancelled"
    finally:
        api.stop()
