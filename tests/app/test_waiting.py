"""?wait is woken by the job's end (published by the store), in both stores."""

from __future__ import annotations

import asyncio
import threading

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
    waiters = JobWaiters(records.kv, records)
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
    waiters = JobWaiters(records.kv, records)
    job = new_job(records)
    records.claim(job, "a", 30, 3)
    try:
        assert asyncio.run(waiters.wait(job, 0.3)).state == "running"
    finally:
        waiters.close()
