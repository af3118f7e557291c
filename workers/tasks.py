"""The Celery task, a thin shell around :class:`workers.job_runner.JobRunner`, and what each worker
process keeps running beside it.

Models load in the prefork child (never the parent, so CUDA starts only where it is used), on a
thread started when the child starts: the child reports itself up to Celery at once, however long
the models take, so a slow CUDA start-up never runs into ``worker_proc_alive_timeout``. Only once a
model has loaded does the worker consume its queue (``add_consumer``); a model that fails to load is
never consumed and is reported in the heartbeat with its error. Beside the jobs, each process beats
(its models, loaded or failed) and sweeps expired leases: a job whose worker died is sent again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import after_setup_logger, worker_process_init, worker_ready

from core.contract import JobSpec
from core.jobs import JobRecords
from core.kv import STORE_ERRORS
from core.kv_redis import RedisKeyValue
from core.queues import TASK, queue_of
from core.settings import get_settings
from core.telemetry import HEARTBEAT_S, Telemetry
from models.registry import ModelRegistry
from workers.celery_app import celery
from workers.job_runner import JobRunner
from workers.lease_sweep import sweep_every
from workers.store_access import StoreUnavailable

log = logging.getLogger(__name__)


class WorkerProcess:
    """One worker process: its store, its models (loaded on a thread), its heartbeat and sweeper."""

    def __init__(self) -> None:
        from workers.model_host import ModelHost

        self.settings = get_settings()
        self.node = os.environ.get("XAI_NODE_NAME") or f"xai@{socket.gethostname()}"
        self.name = f"{self.node}:{os.getpid()}"
        self.kv = RedisKeyValue(self.settings.redis_url or "redis://127.0.0.1:6379/0")
        self.records = JobRecords(self.kv, self.settings.result_ttl_s)
        self.telemetry = Telemetry(self.kv)
        self.host = ModelHost(
            ModelRegistry(self.settings.model_dirs), self.settings.device, self.settings.worker_models
        )
        self.runner = JobRunner(
            self.records, self.telemetry, self.host, self.settings, self.name, timeout_errors=(SoftTimeLimitExceeded,)
        )
        self.loaded = threading.Event()
        self._stop = threading.Event()

    def start(self) -> None:
        """On the thread that will run the tasks."""
        self.runner.enter_thread()
        for target, name in ((self._load, "xai-load"), (self._beat, "xai-heartbeat"), (self._sweep, "xai-sweep")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def _load(self) -> None:
        try:
            self.host.load_all()
            for model in self.host.served:
                self.telemetry.put_capabilities(model, self.host.capabilities(model))
        except Exception:
            log.exception("loading the models failed")
        finally:
            self.loaded.set()
        self._beat_once()
        for model in self.host.served:  # only now: a queue is consumed once its model can run
            self._consume(queue_of(model))
        log.info("models loaded: %s; failed: %s", self.host.served, self.host.failed or "none")

    def _consume(self, queue: str) -> None:
        """Ask this process's worker to consume ``queue``, until it answers: a broadcast sent before the
        worker listens (a model that loads in milliseconds) is lost, so it is sent again."""
        while not self._stop.is_set():
            try:
                if celery.control.add_consumer(queue, destination=[self.node], reply=True, timeout=1.0):
                    return
            except Exception as error:  # the broker is away for a moment
                log.warning("add_consumer %s: %s", queue, error)
                self._stop.wait(1.0)

    def _beat_once(self) -> None:
        try:
            loading = not self.loaded.is_set()
            self.telemetry.heartbeat(self.name, [] if loading else self.host.served, self.host.failed, loading)
        except STORE_ERRORS:
            log.warning("heartbeat: the store is unreachable")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._beat_once()

    def _sweep(self) -> None:
        self.loaded.wait()
        sweep_every(self.records, self.settings, self.send_again, self._stop)

    @staticmethod
    def send_again(spec: JobSpec) -> None:
        celery.send_task(TASK, args=[spec.job_id], queue=queue_of(spec.model), task_id=spec.job_id)


_process: WorkerProcess | None = None
_process_lock = threading.Lock()


def worker_process() -> WorkerProcess:
    global _process
    with _process_lock:
        if _process is None or _process.name.rsplit(":", 1)[1] != str(os.getpid()):
            _process = WorkerProcess()
            _process.start()
        return _process


@after_setup_logger.connect
def _quiet_per_message_logs(**_: object) -> None:
    """Celery's "received" and "succeeded" lines per message at INFO: most messages under load are batch
    mates' own, answered at once, and three lines each cost the worker more than the answer. Failures
    are still logged (ERROR), and the runner logs each batch."""
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)


@worker_process_init.connect
def _start_process(**_: object) -> None:
    """A prefork child starts: load its models on a thread, so the child answers Celery at once."""
    worker_process()


@worker_ready.connect
def _start_solo(**_: object) -> None:
    """The solo pool runs tasks in the worker itself: it has no child to start."""
    if os.environ.get("XAI_POOL") == "solo":
        worker_process()


class JobTask(Task):
    acks_late = True
    reject_on_worker_lost = True


@celery.task(name=TASK, base=JobTask, bind=True)
def run_job(self: JobTask, job_id: str, *more: str) -> str:
    """Run the job, and the jobs its message carries beside it (``app/job_messages.py``: jobs of one
    batch key, which the first one's batch takes; each of them is then answered from the runner's
    memory of the ends it wrote)."""
    process = worker_process()
    process.loaded.wait()
    outcomes = []
    for one in (job_id, *more):
        try:
            outcomes.append(process.runner.run(one))
        except StoreUnavailable as error:
            log.error("job %s: %s; the message goes back to the queue", one, error)
            raise Reject(str(error), requeue=True) from None
    return ",".join(outcomes)
