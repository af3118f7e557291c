"""Run one job to its end: the single function both transports call (Celery task, embedded pool).

The state machine and the error boundary. The runner claims the job's lease (``core/jobs.py``:
a job whose lease is alive elsewhere is not run; one that used up its attempts fails with
``worker_lost``), renews it from a thread while the work runs, reads the spec and pixels, runs
:func:`workers.inference.run_inference`, and writes the end. Known failures become error codes;
nothing of a traceback leaves the worker. A write that fails because the store is away is tried
again until it is back (or, past ``STORE_RETRY_S``, raised, so that the message is not acknowledged
and the lease expires: the job runs again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from core.contract import ErrorInfo, JobResult
from core.errors import ErrorCode, ServiceError
from core.jobs import Claim, JobRecords, Lease
from core.kv import STORE_ERRORS
from core.settings import Settings
from core.telemetry import Telemetry
from workers.inference import photo_of, run_inference
from workers.model_host import ModelHost

log = logging.getLogger(__name__)
STORE_RETRY_S = 120.0  # how long a write waits for the store to come back
PROGRESS_EVERY_S = 0.2
T = TypeVar("T")


class Cancelled(Exception):
    """The client cancelled the job."""


class LeaseLost(Exception):
    """Another attempt owns the job now: stop, and write nothing."""


class StoreUnavailable(Exception):
    """The store stayed away longer than ``STORE_RETRY_S``."""


def persist(write: Callable[[], T], what: str) -> T:
    """``write()``, tried again while the store is unreachable, for up to ``STORE_RETRY_S``."""
    deadline, pause = time.monotonic() + STORE_RETRY_S, 0.25
    while True:
        try:
            return write()
        except STORE_ERRORS as error:
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"{what}: the store stayed unreachable ({error})") from None
            log.warning("%s: store unreachable (%s); trying again in %.1f s", what, type(error).__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class LeaseKeeper:
    """Renews a lease every quarter of its length from a thread, and notes a cancellation or a loss."""

    def __init__(self, records: JobRecords, lease: Lease, lease_s: float) -> None:
        self.records, self.lease, self.lease_s = records, lease, lease_s
        self.lost = self.cancel = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"xai-lease-{lease.job_id[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                held, cancel = self.records.renew(self.lease, self.lease_s)
            except STORE_ERRORS as error:
                log.warning("job %s: lease not renewed, store unreachable (%s)", self.lease.job_id, error)
                continue
            self.cancel = self.cancel or cancel
            if not held:
                self.lost = True
                return


class JobRunner:
    def __init__(
        self,
        records: JobRecords,
        telemetry: Telemetry,
        host: ModelHost,
        settings: Settings,
        owner: str,
        timeout_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.records, self.telemetry, self.host, self.settings = records, telemetry, host, settings
        self.owner = owner
        self.timeout_errors = timeout_errors  # the transport's own "time is up" (Celery's soft time limit)

    def run(self, job_id: str) -> str:
        """Run the job if it is ours to run; returns what happened (a state, or why it was not run)."""
        settings = self.settings
        claim, lease = self.records.claim(
            job_id, self.owner, settings.lease_s, settings.max_attempts, settings.job_time_limit_s
        )
        if claim is Claim.exhausted:
            view = self.records.view(job_id)
            code = view.error.code if view is not None and view.error is not None else ErrorCode.worker_lost
            log.error("job %s: failed with %s, it is not run again", job_id, code)
            self.telemetry.record_failure(code)
        if lease is None:
            log.info("job %s not run: %s", job_id, claim.value)
            return claim.value
        with LeaseKeeper(self.records, lease, self.settings.lease_s) as keeper:
            return self._attempt(lease, keeper)

    def _attempt(self, lease: Lease, keeper: LeaseKeeper) -> str:
        timings: dict[str, float] = {}
        try:
            result = self._work(lease, keeper, timings)
        except Cancelled:
            return self._end(lease, "cancelled", timings=timings)
        except LeaseLost:
            log.warning("job %s: lease lost to another attempt; nothing written", lease.job_id)
            return "lease_lost"
        except ServiceError as error:
            return self._fail(lease, ErrorInfo(code=error.code, message=error.message, field=error.field), timings)
        except JobTimeout:
            return self._timeout(lease, timings)
        except torch.cuda.OutOfMemoryError:
            message = "the device ran out of memory; try fewer images or masks"
            return self._fail(lease, ErrorInfo(code=ErrorCode.out_of_memory, message=message), timings)
        except StoreUnavailable:
            raise
        except Exception as error:
            if isinstance(error, self.timeout_errors):
                return self._timeout(lease, timings)
            log.exception("job %s failed", lease.job_id)
            info = ErrorInfo(code=ErrorCode.internal, message="the worker failed to run the job")
            return self._fail(lease, info, timings)
        state = self._end(lease, "succeeded", result=result, timings=timings)
        if state == "succeeded":
            for method, ms in timings.items():
                self.telemetry.record_duration(method, ms / 1000)
        return state

    def _work(self, lease: Lease, keeper: LeaseKeeper, timings: dict[str, float]) -> JobResult:
        spec = persist(lambda: self.records.spec(lease.job_id), "read the spec")
        if spec is None:
            raise ServiceError(ErrorCode.expired, "the job expired before it ran")
        photos = []
        for index in range(spec.image_count):
            pixels = persist(lambda i=index: self.records.pixels(lease.job_id, i), "read the pixels")
            if pixels is None:
                raise ServiceError(ErrorCode.expired, "the job's images expired before it ran")
            photos.append(photo_of(pixels, spec.image_sizes[index]))
        deadline = time.monotonic() + self.settings.job_time_limit_s
        last = [0.0]

        def checkpoint(fraction: float) -> None:
            if keeper.lost:
                raise LeaseLost
            if keeper.cancel:
                raise Cancelled
            if time.monotonic() > deadline:
                raise JobTimeout
            now = time.monotonic()
            if fraction == 0.0 or now - last[0] > PROGRESS_EVERY_S:
                last[0] = now
                try:
                    held, cancel = self.records.progress(lease, min(fraction, 0.999))
                except STORE_ERRORS:  # progress is best effort; the end is written with retries
                    return
                if not held:
                    raise LeaseLost
                if cancel:
                    raise Cancelled

        def put_png(name: str, png: bytes) -> None:
            persist(lambda: self.records.put_png(lease, name, png), "store a map")

        return run_inference(spec, photos, self.host, checkpoint, put_png, timings)

    def _timeout(self, lease: Lease, timings: dict[str, float]) -> str:
        message = f"the job ran past its time limit of {self.settings.job_time_limit_s} s"
        return self._fail(lease, ErrorInfo(code=ErrorCode.timeout, message=message), timings)

    def _fail(self, lease: Lease, info: ErrorInfo, timings: dict[str, float]) -> str:
        state = self._end(lease, "failed", error=info, timings=timings)
        if state == "failed":
            self.telemetry.record_failure(info.code)
        return state

    def _end(
        self,
        lease: Lease,
        state: str,
        *,
        result: JobResult | None = None,
        error: ErrorInfo | None = None,
        timings: dict[str, float],
    ) -> str:
        written = persist(
            lambda: self.records.finish(lease, state, result=result, error=error, timings_ms=timings),
            f"job {lease.job_id}: write {state}",
        )
        if not written:
            log.warning("job %s: %s not written, the lease was lost", lease.job_id, state)
            return "lease_lost"
        return state


class JobTimeout(Exception):
    """The job ran past its time limit (checked between batches; Celery's soft limit interrupts too)."""
