"""The worker's Celery application (``core/queues.py`` plus the task module), and its safety check."""

from __future__ import annotations

from celery import Celery

from core.queues import TASK, make_celery
from core.settings import get_settings


def unsafe_settings(app: Celery) -> list[str]:
    """Why this Celery configuration could lose a job or run it twice (empty: it is safe)."""
    conf = app.conf
    problems = []
    if not conf.task_acks_late:
        problems.append("task_acks_late must be on: a task acknowledged before it ran is lost with its worker")
    if not conf.task_reject_on_worker_lost:
        problems.append("task_reject_on_worker_lost must be on: a killed child's task must go back to the queue")
    if conf.worker_prefetch_multiplier != 1:
        problems.append(f"worker_prefetch_multiplier must be 1, not {conf.worker_prefetch_multiplier}")
    if set(conf.accept_content or []) != {"json"} or conf.task_serializer != "json":
        problems.append("only JSON messages may be accepted (a pickled message runs code)")
    visibility = (conf.broker_transport_options or {}).get("visibility_timeout", 3600)
    hard, soft = conf.task_time_limit, conf.task_soft_time_limit
    if not hard:
        problems.append("task_time_limit must be set")
    elif hard >= visibility:
        problems.append(
            f"the time limit ({hard} s) must be below the broker's visibility timeout ({visibility} s), "
            "or the broker delivers a running task again"
        )
    if not soft or (hard and soft >= hard):
        problems.append("task_soft_time_limit must be set below task_time_limit (it ends a job as a timeout)")
    return problems


def our_tasks_only(app: Celery) -> list[str]:
    """Unregister every task but ours (Celery's built-in canvas and maintenance tasks: ``celery.map``,
    ``celery.chunks``, ``celery.backend_cleanup``, ...), so that a worker runs nothing else whoever
    writes to the broker: a message naming any other task is refused as unregistered. Returns the names
    taken out. Finalizes the app first (finalizing later would register the built-ins again)."""
    app.loader.import_default_modules()
    app.finalize(auto=True)
    removed = sorted(name for name in app.tasks if name != TASK)
    for name in removed:
        app.tasks.unregister(name)
    return removed


celery = make_celery(get_settings(), include=["workers.tasks"])
