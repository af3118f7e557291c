"""Job messages grouped by batch key under load, each request told of its own message's fate."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.job_messages import JobMessages
from core.contract import JobSpec, RenderOptions
from core.methods import call


def spec(job_id: str, method: str = "gradcam", images: int = 1, model: str = "lenet5-shapes") -> JobSpec:
    return JobSpec(
        job_id=job_id,
        model=model,
        methods=[call(method)],
        outputs=["raw"],
        render=RenderOptions(),
        image_count=images,
        image_sizes=[(32, 32)] * images,
    )


class Broker:
    """Records each message; the first send blocks until released, so that others arrive meanwhile."""

    def __init__(self, hold_first: bool = False) -> None:
        self.messages: list[tuple[str, list[str]]] = []
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.entered = threading.Event()

    def send(self, model: str, job_ids: list[str]) -> None:
        self.entered.set()
        self.release.wait(10)
        self.messages.append((model, job_ids))


def test_jobs_created_while_a_message_is_sent_share_one_per_batch_key_within_the_budget():
    broker = Broker(hold_first=True)
    messages = JobMessages(broker.send, window_s=0.0, max_images=4)
    specs = [spec("first")]
    specs += [spec(f"g{n}", images=2) for n in range(3)]  # 6 images of one key: two messages (budget 4)
    specs += [spec("other", method="gradient"), spec("effnet", model="efficientnet-lite0")]
    try:
        with ThreadPoolExecutor(len(specs)) as pool:
            first = pool.submit(messages.send, specs[0])
            assert broker.entered.wait(10)
            rest = [pool.submit(messages.send, one) for one in specs[1:]]
            while len(messages._waiting) < len(rest):  # all queued behind the held send
                time.sleep(0.01)
            broker.release.set()
            for future in [first, *rest]:
                future.result(timeout=10)
    finally:
        messages.close()
    assert broker.messages[0] == ("lenet5-shapes", ["first"])
    assert sorted(broker.messages[1:]) == sorted(
        [
            ("lenet5-shapes", ["g0", "g1"]),
            ("lenet5-shapes", ["g2"]),
            ("lenet5-shapes", ["other"]),
            ("efficientnet-lite0", ["effnet"]),
        ]
    )


def test_a_job_whose_model_sent_nothing_lately_goes_at_once_and_one_after_it_waits_the_window():
    """The window holds a message only when its model's last one went less than the window ago: a
    single client never waits it. (A 10 s window: waiting it or not is seconds apart.)"""
    broker = Broker()
    messages = JobMessages(broker.send, window_s=10.0, max_images=16)
    try:
        started = time.monotonic()
        messages.send(spec("lone"))
        assert time.monotonic() - started < 5, "sent at once"
        messages.send(spec("lone-model", model="efficientnet-lite0"))
        assert time.monotonic() - started < 5, "another model's last message does not hold it"
        later = threading.Thread(target=messages.send, args=(spec("held"),), daemon=True)
        later.start()
        later.join(2)
        assert later.is_alive() and len(broker.messages) == 2, "within the window of lenet5-shapes's last message"
    finally:
        messages.close()
    later.join(5)
    assert not later.is_alive(), "closing answers the waiting request"


def test_every_request_of_a_message_that_failed_gets_the_error():
    broker = Broker(hold_first=True)

    def refuse(model: str, job_ids: list[str]) -> None:
        broker.send(model, job_ids)
        if len(job_ids) > 1:
            raise ConnectionError("the broker went away")

    messages = JobMessages(refuse, window_s=0.0, max_images=16)
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(messages.send, spec("first"))
            assert broker.entered.wait(10)
            rest = [pool.submit(messages.send, spec(name)) for name in ("a", "b")]
            while len(messages._waiting) < 2:
                time.sleep(0.01)
            broker.release.set()
            first.result(timeout=10)
            for future in rest:
                with pytest.raises(ConnectionError, match="went away"):
                    future.result(timeout=10)
        messages.send(spec("after"))  # the sender goes on
    finally:
        messages.close()
    assert broker.messages[-1] == ("lenet5-shapes", ["after"])
