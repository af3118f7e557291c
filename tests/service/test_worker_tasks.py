"""A worker runs our task and nothing else, whoever writes to the broker (workers/celery_app.py)."""

from __future__ import annotations

import os

import httpx

from core.queues import TASK, make_celery, queue_of
from core.settings import Settings
from tests.service.conftest import wait_until
from tests.service.helpers import b64, encode, shape_photos


def test_a_message_naming_a_task_that_is_not_ours_is_refused(celery_api, redis_server, service_tmp):
    log = service_tmp / "worker.log"
    sender = make_celery(Settings(redis_url=redis_server.url))
    try:
        for name in ("celery.backend_cleanup", "celery.map", "os.system"):
            sender.send_task(name, args=[], queue=queue_of("lenet5-shapes"))
    finally:
        sender.close()

    def refused_all() -> bool:
        text = log.read_text()
        return all(
            f"unregistered task of type '{name}'" in text
            for name in ("celery.backend_cleanup", "celery.map", "os.system")
        )

    wait_until(refused_all, 30, "the worker did not refuse the foreign tasks")
    body = {"model": "lenet5-shapes", "methods": [{"name": "gradcam"}], "images": [b64(encode(shape_photos(1)[0]))]}
    with httpx.Client(base_url=celery_api, timeout=60) as http:
        answer = http.post("/explain?wait=30", json=body)
    assert answer.status_code == 200 and answer.json()["state"] == "succeeded", "the worker goes on serving"


class _Touch:
    """Unpickling this runs a shell command: what a pickled Celery message can do to a worker that takes one."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.path}",))


def test_a_pickled_message_is_refused_unread(celery_api, redis_server, service_tmp):
    marker = service_tmp / "unpickled"
    sender = make_celery(Settings(redis_url=redis_server.url))
    try:
        sender.send_task(TASK, args=[_Touch(str(marker))], queue=queue_of("lenet5-shapes"), serializer="pickle")
    finally:
        sender.close()
    log = service_tmp / "worker.log"
    wait_until(lambda: "untrusted content of type pickle" in log.read_text(), 30, "the pickle was not refused")
    assert not marker.exists(), "the worker unpickled the message"
    body = {"model": "lenet5-shapes", "methods": [{"name": "gradcam"}], "images": [b64(encode(shape_photos(1)[0]))]}
    with httpx.Client(base_url=celery_api, timeout=60) as http:
        answer = http.post("/explain?wait=30", json=body)
    assert answer.status_code == 200 and answer.json()["state"] == "succeeded", "the worker goes on serving"
