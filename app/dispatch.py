"""How a job gets to a worker: Celery over Redis, or an in-process pool (the embedded default).

Both run the same function (``workers.runner.run_job``); only the transport differs. The API
talks to a :class:`Dispatcher` and never imports torch itself: the embedded dispatcher imports the
worker code when it is created, and only in that mode.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.contract import JobSpec
from app.errors import ApiError
from app.job_store import JobStore, MemoryJobStore, RedisJobStore
from app.settings import Settings
from models.registry import ModelRegistry


class Dispatcher(ABC):
    store: JobStore

    @abstractmethod
    def submit(self, spec: JobSpec) -> None: ...

    def cancel(self, job_id: str) -> None:
        """Cancel now if queued; ask the worker to stop between batches if running."""
        self.store.request_cancel(job_id)
        self.store.update(job_id, state="cancelled", only_from={"queued"}, finished_at=time.time())

    @abstractmethod
    def readiness(self) -> tuple[bool, dict[str, Any]]: ...

    @abstractmethod
    def queue_depth(self) -> dict[str, int]: ...

    @abstractmethod
    def layers(self, model: str) -> list[str] | None:
        """The model's layers usable by layer methods, once a worker has loaded it."""

    def close(self) -> None:
        return None


class EmbeddedDispatcher(Dispatcher):
    """A small bounded thread pool in the API process; jobs beyond its queue get 503."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        from workers.model_host import ModelHost
        from workers.runner import run_job

        self.store = MemoryJobStore(settings.result_ttl_s)
        self.host = ModelHost(registry, settings.device)
        self.host.warm_up()
        self._run_job = run_job
        self._pool = ThreadPoolExecutor(settings.embedded_workers, thread_name_prefix="xai-job")
        self._slots = threading.BoundedSemaphore(settings.embedded_queue)
        self._capacity = settings.embedded_queue

    def submit(self, spec: JobSpec) -> None:
        if not self._slots.acquire(blocking=False):
            self.store.update(
                spec.job_id,
                state="failed",
                finished_at=time.time(),
                error={"code": "queue_full", "message": "too many jobs waiting"},
            )
            raise ApiError("queue_full", "too many jobs are waiting; try again later")
        self._pool.submit(self._run, spec.job_id)

    def _run(self, job_id: str) -> None:
        try:
            self._run_job(job_id, self.store, self.host)
        finally:
            self._slots.release()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        alive = not self._pool._shutdown
        return alive, {"mode": "embedded", "pool": "up" if alive else "down", "models": self.host.served}

    def queue_depth(self) -> dict[str, int]:
        return {"embedded": self._capacity - self._slots._value}

    def layers(self, model: str) -> list[str] | None:
        return self.host.layers(model)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class CeleryDispatcher(Dispatcher):
    """Tasks on one Redis queue per model; our job records in the same Redis."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        from workers.celery_app import make_celery, queue_of

        self.store = RedisJobStore(settings.redis_url, settings.result_ttl_s)  # type: ignore[arg-type]
        self.celery = make_celery(settings)
        self._queue_of = queue_of
        self._models = registry.names()

    def submit(self, spec: JobSpec) -> None:
        from workers.celery_app import TASK

        try:
            self.celery.send_task(TASK, args=[spec.job_id], queue=self._queue_of(spec.model), task_id=spec.job_id)
        except Exception as error:  # the broker is down or refused the message
            self.store.update(
                spec.job_id,
                state="failed",
                finished_at=time.time(),
                error={"code": "unavailable", "message": "the job queue is unreachable"},
            )
            raise ApiError("unavailable", f"the job queue is unreachable: {type(error).__name__}") from None

    def cancel(self, job_id: str) -> None:
        super().cancel(job_id)
        self.celery.control.revoke(job_id)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        try:
            self.store.client.ping()
        except Exception as error:
            return False, {"mode": "celery", "broker": f"unreachable: {type(error).__name__}", "workers": {}}
        workers = self.store.workers()
        return bool(workers), {"mode": "celery", "broker": "up", "workers": workers}

    def queue_depth(self) -> dict[str, int]:
        try:
            return {model: int(self.store.client.llen(self._queue_of(model))) for model in self._models}
        except Exception:
            return {}

    def layers(self, model: str) -> list[str] | None:
        try:
            return self.store.layers(model)
        except Exception:
            return None


def make_dispatcher(settings: Settings, registry: ModelRegistry) -> Dispatcher:
    return EmbeddedDispatcher(settings, registry) if settings.embedded else CeleryDispatcher(settings, registry)
