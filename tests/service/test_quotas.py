"""Quotas per API key against a real API in each mode: the request rate (``limits``, in Redis in the
Celery mode) and the jobs in flight."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import KEY_A, KEY_B, Process, RedisServer, keyed_settings, start_api, wait_until
from tests.service.helpers import b64, encode, poll, shape_photos

A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


def start(request, tmp: Path, name: str, **settings: str) -> tuple[Process, str]:
    """An API with keys and ``settings``, in the mode of ``request.param``."""
    if request.param == "celery":
        request.getfixturevalue("celery_api")  # its worker serves this API's jobs
        server: RedisServer = request.getfixturevalue("redis_server")
        settings["redis_url"] = server.url
    return start_api(tmp, f"{name}-{request.param}", **keyed_settings(tmp), **settings)


@pytest.fixture(scope="module", params=["embedded", "celery"])
def rate_api(request, service_tmp) -> Iterator[str]:
    api, base = start(request, service_tmp, "api-rate", rate_limit="10/minute")
    yield base
    api.stop()


@pytest.fixture(scope="module", params=["embedded", "celery"])
def jobs_api(request, service_tmp) -> Iterator[str]:
    api, base = start(request, service_tmp, "api-jobs-cap", max_jobs_per_key="2", embedded_workers="1")
    yield base
    api.stop()


def slow_job() -> dict:
    """A job of a second or more on lenet5-shapes: RISE with the most masks, on four images."""
    return {
        "model": "lenet5-shapes",
        "methods": [{"name": "rise", "params": {"num_masks": 20000}}],
        "images": [b64(encode(photo)) for photo in shape_photos(4)],
        "seed": 1,
    }


def test_the_eleventh_request_in_a_window_is_429_and_another_key_is_not_touched(rate_api):
    with httpx.Client(base_url=rate_api, timeout=60) as http:
        answers = [http.get("/methods", headers=A).status_code for _ in range(11)]
        assert answers == [200] * 10 + [429]
        refused = http.get("/models", headers=A)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert http.get("/methods", headers=B).status_code == 200, "key B has its own window"
        assert http.get("/healthz").status_code == 200, "health is not counted"


def test_a_third_job_in_flight_is_429_until_one_ends(jobs_api):
    with httpx.Client(base_url=jobs_api, timeout=60) as http:
        first = http.post("/explain", json=slow_job(), headers=B)
        second = http.post("/explain", json=slow_job(), headers=B)
        assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
        third = http.post("/explain", json=slow_job(), headers=B)
        assert third.status_code == 429, third.text
        assert third.json()["error"]["code"] == "too_many_jobs" and "retry-after" in third.headers
        assert http.delete(f"/jobs/{first.json()['job_id']}", headers=B).status_code in (200, 202)
        owner = httpx.Client(base_url=jobs_api, timeout=60, headers=B)
        with owner:
            assert poll(owner, first.json()["job_id"])["state"] in ("cancelled", "succeeded")
            fourth = http.post("/explain", json=slow_job(), headers=B)
            assert fourth.status_code == 202, "a cancelled job frees its place"
            for job in (second, fourth):
                assert poll(owner, job.json()["job_id"], timeout=180)["state"] == "succeeded"


@pytest.fixture(scope="module", params=["embedded", "celery"])
def capped_api(request, service_tmp) -> Iterator[str]:
    api, base = start(request, service_tmp, "api-queue-cap", max_queued_per_model="3", embedded_workers="1")
    yield base
    api.stop()


@pytest.mark.slow
def test_a_burst_past_a_models_queue_cap_gets_exactly_its_excess_refused(capped_api):
    """One slow job runs; a burst of 6 more arrives at once: 3 wait, exactly 3 are 503 with Retry-After."""
    with httpx.Client(base_url=capped_api, timeout=60, headers=A) as http:
        running = http.post("/explain", json=slow_job()).json()["job_id"]
        wait_until(lambda: http.get(f"/jobs/{running}").json()["state"] != "queued", 60, "the first job did not start")

        def send(_: int) -> httpx.Response:
            with httpx.Client(base_url=capped_api, timeout=60, headers=A) as own:
                return own.post("/explain", json=slow_job())

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(send, range(6)))
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [202, 202, 202, 503, 503, 503], [answer.text for answer in answers]
        for answer in answers:
            if answer.status_code == 503:
                assert answer.json()["error"]["code"] == "queue_full" and int(answer.headers["retry-after"]) >= 1
        accepted = [running] + [answer.json()["job_id"] for answer in answers if answer.status_code == 202]
        for job in accepted:
            assert poll(http, job, timeout=180)["state"] == "succeeded"
        assert http.post("/explain", json=slow_job()).status_code == 202, "the queue has room again"
