"""The sweep of expired leases, run by every process that runs jobs: a job whose process died (its
lease ran out unrenewed) goes back to ``queued`` and is sent again, or ends when its attempts are spent
or it had run past its time limit (``core/jobs.py``: ``JobRecords.reclaim``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core.contract import JobSpec
from core.jobs import JobRecords
from core.kv import STORE_ERRORS
from core.settings import Settings

log = logging.getLogger(__name__)
SWEEP_S = 5.0  # how often a process looks for expired leases (more often with short leases)


def sweep(records: JobRecords, settings: Settings, send_again: Callable[[JobSpec], None]) -> None:
    """Send again (``send_again``) every job whose lease expired, or end it."""
    for job_id in records.expired_leases():
        outcome = records.reclaim(job_id, settings.max_attempts, settings.job_time_limit_s)
        if outcome == "queued":
            spec = records.spec(job_id)
            if spec is not None:
                send_again(spec)
                log.warning("job %s: its worker was lost; sent again", job_id)
        elif outcome == "failed":
            log.error("job %s: its worker was lost and it cannot run again; failed", job_id)


def sweep_every(
    records: JobRecords, settings: Settings, send_again: Callable[[JobSpec], None], stop: threading.Event
) -> None:
    """:func:`sweep` every ``SWEEP_S`` (or half a lease) until ``stop`` is set; a thread's loop."""
    while True:
        try:
            sweep(records, settings, send_again)
        except STORE_ERRORS:
            log.warning("sweep: the store is unreachable")
        except Exception:
            log.exception("sweep failed")
        if stop.wait(min(SWEEP_S, settings.lease_s / 2)):
            return
