"""``?wait``: a request waiting for its job is woken when the job ends, not by polling.

Every job's end is published on the store's ``xai:ended`` channel (``core/jobs.py``); one listener per
API process wakes the requests waiting for that job. A message can be missed (the listener was
reconnecting), so a waiter also reads the record when it starts waiting and once a second: a safety
net, not the way it learns in the normal case.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool

from core.contract import TERMINAL_STATES, JobView
from core.errors import ErrorCode, ServiceError
from core.jobs import ENDED, JobRecords
from core.kv import KeyValue

SAFETY_READ_S = 1.0


class JobWaiters:
    def __init__(self, kv: KeyValue, records: JobRecords) -> None:
        self.records = records
        self._waiting: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self._stop: Callable[[], None] = kv.listen(ENDED, self._ended)

    def _ended(self, job_id: str) -> None:
        with self._lock:
            waiters = list(self._waiting.get(job_id, []))
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self, job_id: str, seconds: float) -> JobView:
        """The job's view once it ended, or after ``seconds``."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiting.setdefault(job_id, []).append(entry)
        try:
            deadline = time.monotonic() + seconds
            while True:
                event.clear()  # before the read: an end published after it sets the event again
                view = await run_in_threadpool(self.records.view, job_id)
                if view is None:
                    raise ServiceError(ErrorCode.job_not_found, f"job {job_id} expired while waiting")
                remaining = deadline - time.monotonic()
                if view.state in TERMINAL_STATES or remaining <= 0:
                    return view
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, SAFETY_READ_S))
        finally:
            with self._lock:
                entries = self._waiting.get(job_id, [])
                entries.remove(entry)
                if not entries:
                    self._waiting.pop(job_id, None)

    def close(self) -> None:
        self._stop()
