"""How jobs travel in the Celery mode: the task name, a queue per model, the Celery app's settings.

The API only sends tasks by name with this app; the worker adds the task module to it
(``workers/celery_app.py``). Importing this module imports no torch.
"""

from __future__ import annotations

from celery import Celery

from core.settings import Settings

TASK = "xai.run_job"


def queue_of(model: str) -> str:
    """One queue per model: a worker consumes the queues of the models it has loaded."""
    return f"xai.model.{model}"


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    url = settings.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("xai", broker=url, include=include or [])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in our job records
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=max(settings.job_time_limit_s - 5, 1),
        # The broker re-delivers an unacknowledged task after this; it must exceed the time limit.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        worker_max_memory_per_child=4_000_000,  # KiB: recycle a child whose RSS passed 4 GB
        broker_connection_retry_on_startup=True,
        task_default_queue="xai.default",
    )
    return app
