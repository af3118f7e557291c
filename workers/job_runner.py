"""Run one job to its end: the single function both transports call (Celery task, embedded pool).

The state machine and the error boundary. The runner claims the job's lease (``core/jobs.py``:
a job whose lease is alive elsewhere is not run; one that used up its attempts fails with
``worker_lost``), then claims the jobs sent for the same model with the same methods that wait
beside it (a batch, up to ``batch_max_images``), renews every lease from a thread while the work
runs, runs :func:`workers.inference.compute` once for the batch, and writes each job's end. Each job
keeps its own progress, cancellation, result and error: a job cancelled mid-batch ends at the next
checkpoint while the others go on, and a batch that fails runs again job by job. Known failures
become error codes; nothing of a traceback leaves the worker. A write that fails because the store is
away is tried again until it is back (``workers/store_access.py``; past ``STORE_RETRY_S`` it raises,
so that the message is not acknowledged and the lease expires: the job runs again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

from core.contract import ErrorInfo, JobSpec
from core.errors import ErrorCode, ServiceError
from core.images import photo_of
from core.jobs import Claim, End, JobRecords, Lease
from core.kv import STORE_ERRORS
from core.settings import Settings
from core.telemetry import Telemetry
from workers.inference import compute, result_of
from workers.model_host import ModelHost
from workers.store_access import LeaseKeeper, StoreUnavailable, persist

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.2
REMEMBERED_ENDS = 4096  # job ids whose end this runner wrote, for the messages of batch mates that come after


class Cancelled(Exception):
    """The client cancelled the job."""


@dataclass
class Job:
    """One job of a batch, as its attempt runs: its lease, spec and photos, and its end once known."""

    lease: Lease
    spec: JobSpec
    photos: list[Image.Image] = field(default_factory=list)
    outcome: str | None = None

    @property
    def job_id(self) -> str:
        return self.lease.job_id


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
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._ended_lock = threading.Lock()  # the embedded pool runs jobs on several threads

    def enter_thread(self) -> None:
        """Set up the thread that runs jobs: torch's threads (``Settings.job_threads``; per calling
        thread with OpenMP). A team as large as the cores, in the embedded mode too: EfficientNet-Lite0's
        GradCAM job 21.5 against 23.7 ms on one thread, 16 clients 32.7 against 28.1 jobs/s (2 cores;
        the slower team once measured here came from a second pool of threads, see ``ModelHost.load_all``)."""
        torch.set_num_threads(self.settings.job_threads)

    def run(self, job_id: str) -> str:
        """Run the job if it is ours to run, with the compatible jobs waiting beside it; returns what
        happened to it (a state, or why it was not run).

        A job this runner ended in a batch still has its own message, which arrives after the end (most
        messages under load): it is answered from memory, without a round trip to the store (ends are
        final, so the claim could only say ``finished``)."""
        if job_id in self._ended:
            log.debug("job %s not run: finished here", job_id)
            return Claim.finished.value
        claim, lease = self._claim(job_id)
        if lease is None:
            return claim.value
        spec = persist(lambda: self.records.spec(job_id), "read the spec")
        if spec is None:
            info = ErrorInfo(code=ErrorCode.expired, message="the job expired before it ran")
            persist(lambda: self.records.finish(lease, "failed", error=info), f"job {job_id}: write failed")
            return "failed"
        jobs = [Job(lease, spec), *self._gather(spec)]
        with (
            LeaseKeeper(self.records, [job.lease for job in jobs], self.settings.lease_s) as keeper,
            self.host.threads(spec.model),
        ):
            self._attempt(jobs, keeper)
        return jobs[0].outcome or "lease_lost"

    def _claim(self, job_id: str) -> tuple[Claim, Lease | None]:
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
            (log.debug if claim is Claim.finished else log.info)("job %s not run: %s", job_id, claim.value)
        return claim, lease

    def _gather(self, spec: JobSpec) -> list[Job]:
        """Claim jobs sent for the same model with the same methods, up to the batch budget, waiting
        up to ``batch_window_ms`` for more while others keep arriving. A job alone on the hint list
        does not wait: nobody else was sending. A job taken off the hint list but not claimed keeps
        its message."""
        budget = self.settings.batch_max_images - spec.image_count
        if budget <= 0:
            return []
        key, mates = spec.batch_key(), []
        deadline = time.monotonic() + self.settings.batch_window_ms / 1000
        while budget > 0:
            others = [job_id for job_id in self.records.queued(spec.model, 16) if job_id != spec.job_id]
            fitting: list[JobSpec] = []
            for other in self.records.specs(others) if others else []:
                if other is not None and other.batch_key() == key and other.image_count <= budget:
                    fitting.append(other)
                    budget -= other.image_count
            settings = self.settings
            claims = self.records.claim_many(
                [other.job_id for other in fitting], self.owner, settings.lease_s, settings.max_attempts
            )
            for other, (_, lease) in zip(fitting, claims, strict=True):
                if lease is not None:
                    mates.append(Job(lease, other))
                else:
                    budget += other.image_count  # not ours after all
            pause = deadline - time.monotonic()
            if pause <= 0 or not others:
                break
            time.sleep(pause)
        if mates:
            log.info("job %s runs in a batch with %d more", spec.job_id, len(mates))
        return mates

    def _attempt(self, jobs: list[Job], keeper: LeaseKeeper) -> None:
        """Run the batch to the end of every job in it."""
        self._photos(jobs)
        live = [job for job in jobs if job.outcome is None]
        if not live:
            return
        timings: dict[str, float] = {}
        try:
            computed = compute(
                [job.spec for job in live],
                [job.photos for job in live],
                self.host,
                self._checkpoint(live, keeper),
                timings,
            )
        except Cancelled:
            return  # every job of the batch ended on its own
        except StoreUnavailable:
            raise
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt | SystemExit):
                raise
            self._failed(live, error, keeper, timings)
            return
        ends: list[tuple[Job, End]] = []
        for job, share in zip(live, computed, strict=True):
            if job.outcome is not None:
                continue  # cancelled or lost while the batch ran
            maps: dict[str, bytes] = {}
            try:
                result = result_of(job.spec, share, self.host, maps.__setitem__)
            except ServiceError as error:
                ends.append((job, End(job.lease, "failed", error=_info(error), timings_ms=timings)))
                continue
            ends.append((job, End(job.lease, "succeeded", result=result, timings_ms=timings, maps=maps)))
        self._end_all(ends)
        succeeded = sum(job.outcome == "succeeded" for job in live)
        durations = [(method, ms / 1000) for method, ms in timings.items()] * succeeded
        try:
            self.telemetry.record_durations(durations)
        except STORE_ERRORS as error:  # metrics are best effort
            log.warning("job durations not recorded: %s", type(error).__name__)

    def _failed(self, live: list[Job], error: BaseException, keeper: LeaseKeeper, timings: dict[str, float]) -> None:
        """The batch failed. A timeout ends every job; anything else, in a batch of several, runs each job
        alone (one bad job never fails its batch mates); alone, the job fails with the error's code."""
        pending = [job for job in live if job.outcome is None]
        if isinstance(error, (JobTimeout, *self.timeout_errors)):
            message = f"the job ran past its time limit of {self.settings.job_time_limit_s} s"
            for job in pending:
                self._end_now(job, "failed", ServiceError(ErrorCode.timeout, message), timings)
            return
        if len(pending) > 1:
            log.warning("a batch of %d jobs failed (%s); running them one by one", len(pending), type(error).__name__)
            for job in pending:
                self._attempt([job], keeper)
            return
        for job in pending:
            if isinstance(error, ServiceError):
                self._end_now(job, "failed", error, timings)
            elif isinstance(error, torch.cuda.OutOfMemoryError):
                message = "the device ran out of memory; try fewer images or masks"
                self._end_now(job, "failed", ServiceError(ErrorCode.out_of_memory, message), timings)
            else:
                log.error("job %s failed", job.job_id, exc_info=error)
                message = "the worker failed to run the job"
                self._end_now(job, "failed", ServiceError(ErrorCode.internal, message), timings)

    def _photos(self, jobs: list[Job]) -> None:
        """Every job's photos, read in one round trip; a job whose images expired fails alone."""
        pixels = persist(lambda: self.records.pixels([(job.job_id, job.spec.image_count) for job in jobs]), "read")
        for job, found in zip(jobs, pixels, strict=True):
            stored = [data for data in found if data is not None]
            if len(stored) < job.spec.image_count:
                self._end_now(job, "failed", ServiceError(ErrorCode.expired, "the job's images expired before it ran"))
                continue
            job.photos = [photo_of(data, size) for data, size in zip(stored, job.spec.image_sizes, strict=True)]

    def _checkpoint(self, live: list[Job], keeper: LeaseKeeper) -> Callable[[float], None]:
        """Between batches of the kernels: jobs cancelled or lost leave the batch (the others go on);
        progress is written every ``PROGRESS_EVERY_S``; past the time limit, the batch stops."""
        deadline = time.monotonic() + self.settings.job_time_limit_s
        last = [time.monotonic()]  # the claim wrote progress 0

        def checkpoint(fraction: float) -> None:
            now = time.monotonic()
            write = now - last[0] > PROGRESS_EVERY_S
            if write:
                last[0] = now
            for job in live:
                if job.outcome is not None:
                    continue
                if job.job_id in keeper.lost:
                    job.outcome = "lease_lost"
                    log.warning("job %s: lease lost to another attempt; nothing written", job.job_id)
                    continue
                cancel = job.job_id in keeper.cancel
                if write and not cancel:
                    try:
                        held, cancel = self.records.progress(job.lease, min(fraction, 0.999))
                    except STORE_ERRORS:  # progress is best effort; the end is written with retries
                        continue
                    if not held:
                        job.outcome = "lease_lost"
                        continue
                if cancel:
                    self._end(job, "cancelled", timings={})
            if all(job.outcome is not None for job in live):
                raise Cancelled
            if now > deadline:
                raise JobTimeout

        return checkpoint

    def _end_now(self, job: Job, state: str, error: ServiceError, timings: dict[str, float] | None = None) -> None:
        self._end(job, state, error=_info(error), timings=timings or {})

    def _end(self, job: Job, state: str, *, error: ErrorInfo | None = None, timings: dict[str, float]) -> None:
        self._end_all([(job, End(job.lease, state, error=error, timings_ms=timings))])

    def _end_all(self, ends: list[tuple[Job, End]]) -> None:
        """Write the ends of several jobs in one pass (tried again while the store is away); a job whose
        lease was lost writes nothing."""
        if not ends:
            return
        names = ", ".join(job.job_id for job, _ in ends)
        written = persist(lambda: self.records.finish_many([end for _, end in ends]), f"jobs {names}: write the end")
        for (job, end), landed in zip(ends, written, strict=True):
            if not landed:
                log.warning("job %s: %s not written, the lease was lost", job.job_id, end.state)
            job.outcome = end.state if landed else "lease_lost"
            if landed:
                self._remember_end(job.job_id)
            if landed and end.state == "failed" and end.error is not None:
                self.telemetry.record_failure(end.error.code)

    def _remember_end(self, job_id: str) -> None:
        with self._ended_lock:
            self._ended[job_id] = None
            if len(self._ended) > REMEMBERED_ENDS:
                self._ended.popitem(last=False)


def _info(error: ServiceError) -> ErrorInfo:
    """A failure as a job's record carries it."""
    return ErrorInfo(code=error.code, message=error.message, field=error.field)


class JobTimeout(Exception):
    """The job ran past its time limit (checked between batches; Celery's soft limit interrupts too)."""
