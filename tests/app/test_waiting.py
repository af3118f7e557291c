"""?wait is woken by the job's end (published by the store), in both stores."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app import waiting
from app.waiting import JobWaiters
from core.contract import JobResult
from core.jobs import JobRecords
from core.kv_memory import MemoryKeyValue
from core.kv_redis import RedisKeyValue
from tests.core.test_jobs import new_job, redis_for_records  # noqa: F401 - the fixture


@pytest.fixture(params=["memory", "redis"])
def records(request, redis_for_records):  # noqa: F811
    kv = MemoryKeyValue() if request.param == "memory" else RedisKeyValue(redis_for_records.url)
    yield JobRecords(kv, ttl_s=60)
    kv.close()


def test_a_waiter_wakes_when_the_job_ends_without_reading_again(records, monkeypatch):
    monkeypatch.setattr(waiting, "SAFETY_READ_S", 120.0)  # woken by the message, or not at all
    waiters = JobWaiters(records)
    job = new_job(records)
    _, lease = records.claim(job, "a", 30, 3)

    async def scenario() -> str:
        await asyncio.sleep(0.5)  # the listener's subscription is up
        waiting_for = asyncio.create_task(waiters.wait(job, 60))
        await asyncio.sleep(0.2)
        assert not waiting_for.done()
        finishing = threading.Thread(
            target=records.finish, args=(lease, "succeeded"), kwargs={"result": JobResult(model="m", images=[])}
        )
        finishing.start()
        state = (await asyncio.wait_for(waiting_for, 30)).state
        finishing.join(30)  # the end is written in full before the store closes
        return state

    try:
        assert asyncio.run(scenario()) == "succeeded"
    finally:
        waiters.close()


def test_a_waiter_returns_the_running_job_after_its_time(records):
    waiters = JobWaiters(records)
    job = new_job(records)
    records.claim(job, "a", 30, 3)
    try:
        assert asyncio.run(waiters.wait(job, 0.3)).state == "running"
    finally:
        waiters.close()


def test_a_watch_started_before_the_job_is_sent_gets_the_end_from_the_message(records, monkeypatch):
    """The request's own path: watch, then create; the ended record rides in the message, so the
    waiter never reads the store (its reads fail here) even when the job ends at once."""
    monkeypatch.setattr(waiting, "SAFETY_READ_S", 120.0)
    waiters = JobWaiters(records)

    async def scenario() -> str:
        await asyncio.sleep(0.5)  # the listener's subscription is up
        job = f"{time.time_ns():032x}"[-32:]
        with waiters.watching(job) as watch:
            new_job(records, job_id=job)
            view = records.view(job)
            _, lease = records.claim(job, "a", 30, 3)
            records.finish(lease, "succeeded", result=JobResult(model="m", images=[]))
            monkeypatch.setattr(records, "view", lambda job_id: pytest.fail("the waiter read the store"))
            return (await asyncio.wait_for(watch.until_end(60, view), 30)).state

    try:
        assert asyncio.run(scenario()) == "succeeded"
    finally:
        waiters.close()
