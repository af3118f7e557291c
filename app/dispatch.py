"""How a job gets to a worker: Celery over Redis, or a job process of the API's own (the embedded default).

Both run the same runner (``workers.job_runner.JobRunner``) in a process of its own; only the
transport differs. The API talks to a :class:`Dispatcher` and never imports ``workers``: the embedded
mode starts its job process as a program (``python -m workers.job_process``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from app.embedded_jobs import EmbeddedJobs
from app.job_messages import JobMessages
from app.waiting import JobWaiters
from core.capabilities import Capabilities
from core.contract import JobSpec, JobView
from core.errors import ErrorCode, ServiceError
from core.jobs import JobRecords
from core.kv import KeyValue
from core.kv_memory import MemoryKeyValue
from core.kv_redis import RedisKeyValue
from core.settings import Settings
from core.telemetry import Telemetry, load_errors, serving
from models.registry import ModelRegistry

WORKERS_CACHE_S = 1.0  # how long the API trusts its last read of the heartbeats


class Dispatcher(ABC):
    kv: KeyValue
    records: JobRecords
    telemetry: Telemetry
    waiters: JobWaiters

    def _open(self, kv: KeyValue, settings: Settings) -> None:
        """The store both transports keep job records and telemetry in, and the waiters on it."""
        self.kv, self.settings = kv, settings
        self.records = JobRecords(kv, settings.result_ttl_s)
        self.telemetry = Telemetry(kv)
        self.waiters = JobWaiters(self.records)
        self._capabilities: dict[str, tuple[float, Capabilities | None]] = {}

    @abstractmethod
    def submit(self, spec: JobSpec) -> None:
        """Send a created job to a worker; ServiceError (and the job failed) when it cannot be sent."""

    def enqueue(
        self, spec: JobSpec, pixels: list[bytes], owner: str | None = None, quota: tuple[str, int] | None = None
    ) -> JobView:
        """Check that a live worker serves the model, create the job and send it: the request's one
        step on a thread. ``owner``, ``quota``: :meth:`core.jobs.JobRecords.create`."""
        self.require_worker(spec.model)
        view = self.records.create(spec, pixels, owner, quota, self.settings.max_queued_per_model)
        self.submit(spec)
        return view

    def cancel(self, job_id: str) -> JobView | None:
        """Cancel now if queued; ask the worker to stop at its next batch if running."""
        return self.records.cancel(job_id)

    @abstractmethod
    def models(self) -> dict[str, dict[str, Any]]:
        """Per model: the live workers that loaded it (``workers``) and load errors (``errors``)."""

    def require_worker(self, model: str) -> None:
        """ServiceError ``no_worker`` (503) when no live worker has loaded ``model``."""
        state = self.models().get(model, {})
        if not state.get("workers"):
            errors = state.get("errors") or {}
            why = f": {next(iter(errors.values()))}" if errors else ""
            raise ServiceError(ErrorCode.no_worker, f"no live worker serves model {model!r}{why}", "model")

    @abstractmethod
    def readiness(self) -> tuple[bool, dict[str, Any]]: ...

    @abstractmethod
    def queue_depth(self) -> dict[str, int]: ...

    def capabilities(self, model: str) -> Capabilities | None:
        """What the model can do, once a worker has loaded it (read again after ``WORKERS_CACHE_S``)."""
        at, found = self._capabilities.get(model, (0.0, None))
        if time.monotonic() - at <= WORKERS_CACHE_S:
            return found
        try:
            found = self.telemetry.capabilities(model)
        except Exception:  # the store is away: the worker checks the request itself
            return None
        self._capabilities[model] = (time.monotonic(), found)
        return found

    def close(self) -> None:
        self.waiters.close()
        self.kv.close()


class EmbeddedDispatcher(Dispatcher):
    """Jobs in a job process the API starts and supervises (``app/embedded_jobs.py``), over the API's
    in-memory store; jobs beyond ``embedded_queue`` get 503."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        store = MemoryKeyValue()
        self._open(store, settings)
        self.registry = registry
        self.jobs = EmbeddedJobs(store, settings)

    def submit(self, spec: JobSpec) -> None:
        if not self.jobs.submit(spec.job_id):
            self.records.fail(spec.job_id, ErrorCode.queue_full, "too many jobs waiting")
            raise ServiceError(ErrorCode.queue_full, "too many jobs are waiting; try again later")

    def models(self) -> dict[str, dict[str, Any]]:
        served, failed = self.jobs.served, self.jobs.failed
        return (
            {name: {"workers": ["embedded"] if name in served else [], "errors": {}} for name in self.registry.names()}
            | {name: {"workers": [], "errors": {"embedded": error}} for name, error in failed.items()}
            | _broken(self.registry)
        )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        alive = self.jobs.alive
        detail = {"mode": "embedded", "pool": "up" if alive else "down", "models": list(self.jobs.served)}
        failed = self.jobs.failed | self.registry.broken
        return alive and bool(self.jobs.served), detail | {"failed": failed}

    def queue_depth(self) -> dict[str, int]:
        return {"embedded": self.jobs.waiting}

    def close(self) -> None:
        self.jobs.close()
        super().close()


class CeleryDispatcher(Dispatcher):
    """Tasks on one Redis queue per model; our job records in the same Redis."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        from core.queues import make_celery, queue_of

        self._open(RedisKeyValue(settings.redis_url), settings)  # type: ignore[arg-type]
        self.celery = make_celery(settings)
        self._queue_of = queue_of
        self._registry = registry
        self._seen: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._lock = threading.Lock()
        self._messages = JobMessages(self._send, settings.batch_window_ms / 1000, settings.batch_max_images)

    def _send(self, model: str, job_ids: list[str]) -> None:
        from core.queues import TASK

        self.celery.send_task(TASK, args=job_ids, queue=self._queue_of(model), task_id=job_ids[0])

    def submit(self, spec: JobSpec) -> None:
        try:
            self._messages.send(spec)
        except Exception as error:  # the broker is down or refused the message
            with contextlib.suppress(Exception):  # the store may be away with the broker: the record expires
                self.records.fail(spec.job_id, ErrorCode.unavailable, "the job queue is unreachable")
            raise ServiceError(ErrorCode.unavailable, f"the job queue is unreachable: {type(error).__name__}") from None

    def _workers(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            at, workers = self._seen
            if time.monotonic() - at > WORKERS_CACHE_S:
                workers = self.telemetry.workers()
                self._seen = (time.monotonic(), workers)
            return workers

    def models(self) -> dict[str, dict[str, Any]]:
        workers = self._workers()
        served, errors = serving(workers), load_errors(workers)
        found = {
            name: {"workers": served.get(name, []), "errors": errors.get(name, {})} for name in self._registry.names()
        }
        return found | _broken(self._registry)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        try:
            self.kv.ping()
            workers = self.telemetry.workers()
        except Exception as error:
            return False, {"mode": "celery", "broker": f"unreachable: {type(error).__name__}", "workers": {}}
        served = serving(workers)
        detail = {
            "mode": "celery",
            "broker": "up",
            "workers": workers,
            "models": {name: len(served.get(name, [])) for name in self._registry.names()},
            "failed": load_errors(workers)
            | {name: {"manifest": error} for name, error in self._registry.broken.items()},
        }
        return bool(served), detail

    def queue_depth(self) -> dict[str, int]:
        try:
            client = self.kv.client  # type: ignore[attr-defined]
            return {model: int(client.llen(self._queue_of(model))) for model in self._registry.names()}
        except Exception:
            return {}

    def close(self) -> None:
        self._messages.close()
        super().close()


def _broken(registry: ModelRegistry) -> dict[str, dict[str, Any]]:
    """Models whose manifests are broken, as ``models()`` shows them: no worker, the manifest's error."""
    return {name: {"workers": [], "errors": {"manifest": error}} for name, error in registry.broken.items()}


def make_dispatcher(settings: Settings, registry: ModelRegistry) -> Dispatcher:
    return EmbeddedDispatcher(settings, registry) if settings.embedded else CeleryDispatcher(settings, registry)
