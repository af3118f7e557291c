"""The Celery task: a thin shell around ``workers.runner.run_job``.

Models are held per worker process (the prefork child, never the parent, so CUDA is initialised
only where it is used), built when the child starts, and published to Redis with a heartbeat so
the API knows a worker is ready and which layers each model offers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import cached_property

from celery import Task
from celery.signals import worker_process_init

from app.job_store import RedisJobStore
from app.settings import get_settings
from models.registry import ModelRegistry
from workers.celery_app import TASK, celery

log = logging.getLogger(__name__)


class ModelTask(Task):
    """Per-process resources, created on first use (or by the child's start-up hook)."""

    @cached_property
    def store(self) -> RedisJobStore:
        settings = get_settings()
        return RedisJobStore(settings.redis_url or "redis://127.0.0.1:6379/0", settings.result_ttl_s)

    @cached_property
    def host(self):
        from workers.model_host import ModelHost

        settings = get_settings()
        host = ModelHost(ModelRegistry(settings.model_dirs), settings.device, settings.worker_models)
        host.warm_up()
        for name in host.served:
            self.store.put_layers(name, host.layers(name))
        self._start_heartbeat(host.served)
        return host

    def _start_heartbeat(self, models: list[str]) -> None:
        worker = f"{socket.gethostname()}:{os.getpid()}"

        def beat() -> None:
            while True:
                try:
                    self.store.heartbeat(worker, models)
                except Exception:  # Redis away for a moment: the next beat retries
                    log.warning("heartbeat to Redis failed")
                threading.Event().wait(5)

        threading.Thread(target=beat, name="xai-heartbeat", daemon=True).start()


@celery.task(name=TASK, base=ModelTask, bind=True)
def run_job(self: ModelTask, job_id: str) -> str:
    from workers.runner import run_job as run

    return run(job_id, self.store, self.host)


@worker_process_init.connect
def _load_models(**_: object) -> None:
    """Build the models as soon as a prefork child starts, before it takes a job."""
    run_job.host  # noqa: B018 - the property builds and caches them
