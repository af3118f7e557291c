"""The job record's state machine, leases and fencing, on every store: memory, a real redis-server, and the
memory store lent to another process over its socket (the embedded job process's view, ``core/kv_shared.py``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from core.contract import ErrorInfo, JobResult, JobSpec, RenderOptions
from core.jobs import Claim, JobRecords
from core.kv import KeyValue
from core.kv_memory import MemoryKeyValue
from core.kv_redis import RedisKeyValue
from core.kv_shared import SharedKeyValue, StoreServer
from tests.service.conftest import RedisServer

LEASE_S = 0.5


@pytest.fixture(scope="module")
def redis_for_records(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("records"))
    server.start()
    yield server
    server.stop()


STORES = ["memory", "redis", "shared"]


@contextmanager
def store_of(kind: str, redis_server: RedisServer) -> Iterator[KeyValue]:
    """An empty store of ``kind``; "shared": a :class:`SharedKeyValue` client of a served memory store."""
    if kind == "memory":
        yield MemoryKeyValue()
    elif kind == "redis":
        kv = RedisKeyValue(redis_server.url)
        kv.client.flushdb()  # each test starts from an empty store
        yield kv
        kv.close()
    else:
        server = StoreServer(MemoryKeyValue(), lambda role, connection: connection.close())
        shared = SharedKeyValue(server.address, server.authkey)
        yield shared
        shared.close()
        server.close()


@pytest.fixture(params=STORES)
def records(request, redis_for_records) -> Iterator[JobRecords]:
    with store_of(request.param, redis_for_records) as kv:
        yield JobRecords(kv, ttl_s=60)


def new_job(records: JobRecords, images: int = 2, job_id: str | None = None) -> str:
    spec = JobSpec(
        job_id=job_id or f"{time.time_ns():032x}"[-32:],
        model="lenet5-shapes",
        methods=[],
        outputs=["raw"],
        render=RenderOptions(),
        image_count=images,
        image_sizes=[(2, 1)] * images,
    )
    records.create(spec, [b"\x00" * 6] * images)
    return spec.job_id


def test_a_claimed_job_is_not_claimed_again_while_its_lease_lives(records):
    job = new_job(records)
    claim, lease = records.claim(job, "a", LEASE_S, max_attempts=3)
    assert claim is Claim.run and lease is not None and lease.attempt == 1
    assert records.claim(job, "b", LEASE_S, max_attempts=3) == (Claim.held, None)
    view = records.view(job)
    assert view.state == "running" and view.attempts == 1


def test_an_expired_lease_is_reclaimed_and_the_old_attempt_is_fenced_off(records):
    job = new_job(records)
    _, first = records.claim(job, "a", LEASE_S, max_attempts=3)
    assert records.reclaim(job, max_attempts=3, time_limit_s=60) is None, "the lease is alive"
    time.sleep(LEASE_S + 0.1)
    assert records.expired_leases() == [job]
    assert records.reclaim(job, max_attempts=3, time_limit_s=60) == "queued"
    assert records.view(job).state == "queued"
    claim, second = records.claim(job, "b", LEASE_S, max_attempts=3)
    assert claim is Claim.run and second.attempt == 2
    # The first attempt comes back to life: none of its writes land.
    assert records.progress(first, 0.5) == (False, False)
    assert records.renew(first, LEASE_S) == (False, False)
    assert records.finish(first, "failed", error=ErrorInfo(code="internal", message="x")) is False
    assert records.finish(second, "succeeded", result=JobResult(model="lenet5-shapes", images=[])) is True
    view = records.view(job)
    assert view.state == "succeeded" and view.attempts == 2 and view.error is None
    assert records.pixels([(job, 2)]) == [[None, None]], "the pixels go with the job's end"
    assert records.expired_leases() == []


def test_the_last_attempt_lost_fails_the_job_with_worker_lost(records):
    job = new_job(records)
    for attempt in range(1, 3):
        claim, lease = records.claim(job, f"w{attempt}", LEASE_S / 5, max_attempts=2)
        assert claim is Claim.run and lease.attempt == attempt
        time.sleep(LEASE_S / 5 + 0.05)
    assert records.reclaim(job, max_attempts=2, time_limit_s=60) == "failed"
    view = records.view(job)
    assert view.state == "failed" and view.error.code == "worker_lost" and view.attempts == 2


def test_a_redelivered_message_of_a_job_with_spent_attempts_fails_it(records):
    job = new_job(records)
    records.claim(job, "a", LEASE_S / 5, max_attempts=1)
    time.sleep(LEASE_S / 5 + 0.05)
    assert records.claim(job, "b", LEASE_S, max_attempts=1) == (Claim.exhausted, None)
    assert records.view(job).error.code == "worker_lost"


def test_a_lease_past_the_time_limit_ends_as_timeout(records):
    job = new_job(records)
    records.claim(job, "a", LEASE_S / 5, max_attempts=3)
    time.sleep(LEASE_S / 5 + 0.05)
    assert records.reclaim(job, max_attempts=3, time_limit_s=0.01) == "failed"
    assert records.view(job).error.code == "timeout"


def test_a_worker_that_died_early_is_not_a_timeout_however_late_it_is_noticed(records):
    job = new_job(records)
    records.claim(job, "a", LEASE_S / 5, max_attempts=3)
    time.sleep(LEASE_S + 0.1)  # longer than the time limit below
    assert records.reclaim(job, max_attempts=3, time_limit_s=LEASE_S) == "queued"
    records.claim(job, "b", LEASE_S / 5, max_attempts=3, time_limit_s=LEASE_S)
    time.sleep(LEASE_S / 5 + 0.05)
    assert records.claim(job, "c", LEASE_S, max_attempts=3, time_limit_s=LEASE_S)[0] is Claim.run


def test_a_redelivered_job_that_ran_into_its_time_limit_is_not_run_again(records):
    job = new_job(records)
    _, lease = records.claim(job, "a", LEASE_S / 5, max_attempts=3)
    for _ in range(3):  # alive and renewing, up to its time limit
        time.sleep(LEASE_S / 10)
        records.renew(lease, LEASE_S / 5)
    time.sleep(LEASE_S / 5 + 0.05)
    assert records.claim(job, "b", LEASE_S, max_attempts=3, time_limit_s=LEASE_S / 5)[0] is Claim.exhausted
    assert records.view(job).error.code == "timeout"


def test_cancel_ends_a_queued_job_and_flags_a_running_one(records):
    queued = new_job(records)
    assert records.cancel(queued).state == "cancelled"
    assert records.claim(queued, "a", LEASE_S, 3) == (Claim.finished, None)
    running = new_job(records)
    _, lease = records.claim(running, "a", LEASE_S, 3)
    assert records.cancel(running).state == "running"
    assert records.progress(lease, 0.3) == (True, True), "the worker learns at its next batch"
    assert records.finish(lease, "cancelled") is True
    assert records.cancel("0" * 32) is None


def test_renewing_keeps_the_lease_alive(records):
    job = new_job(records)
    _, lease = records.claim(job, "a", LEASE_S, 3)
    for _ in range(4):
        time.sleep(LEASE_S / 2)
        assert records.renew(lease, LEASE_S) == (True, False)
    assert records.claim(job, "b", LEASE_S, 3) == (Claim.held, None)
    assert records.expired_leases() == []
