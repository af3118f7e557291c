"""The Celery application: Redis as broker and result store, settings for long GPU jobs.

Importing this module imports no torch: the API uses it to send tasks. The task itself lives in
:mod:`workers.tasks`, which only a worker imports.
"""

from __future__ import annotations

from celery import Celery

from app.settings import Settings, get_settings

TASK = "xai.run_job"


def queue_of(model: str) -> str:
    """One queue per model: a worker consumes the queues of the models it serves."""
    return f"xai.model.{model}"


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    url = settings.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("xai", broker=url, backend=url, include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=max(settings.job_time_limit_s - 5, 1),
        # The broker re-delivers an unacknowledged task after this; it must exceed the time limit.
        broker_transport_options={"visibility_timeout": settings.job_time_limit_s + 60},
        result_expires=settings.result_ttl_s,
        worker_max_memory_per_child=4_000_000,  # KiB: recycle a child whose RSS passed 4 GB
        broker_connection_retry_on_startup=True,
        task_default_queue="xai.default",
    )
    return app


celery = make_celery()
