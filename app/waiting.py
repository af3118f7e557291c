"""``?wait``: a request waiting for its job is woken when the job ends, not by polling.

Every job's end is published on the store's ``xai:ended`` channel (``core/jobs.py``), with the ended
record when it is small; one listener per API process hands it to the requests waiting for that job.
A request starts watching before its job is sent, so the end cannot slip past it, and in the normal
case it never reads the store: the message is the answer. A message can be missed (the listener was
reconnecting) or carry only the id, so a waiter reads the record when the message has none, and
once a second: a safety net, not the way it learns.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from fastapi.concurrency import run_in_threadpool

from core.contract import TERMINAL_STATES, JobView
from core.errors import ErrorCode, ServiceError
from core.jobs import ENDED, JobRecords, parse_ended, view_of

SAFETY_READ_S = 1.0


class Watch:
    """One request's wait for one job."""

    def __init__(self, records: JobRecords, job_id: str) -> None:
        self.records, self.job_id = records, job_id
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.ended: bytes | None = None  # the ended record, when the message carried it

    def deliver(self, record: bytes | None) -> None:
        """From the listener's thread."""

        def wake() -> None:
            if record is not None:
                self.ended = record
            self.event.set()

        self.loop.call_soon_threadsafe(wake)

    async def until_end(self, seconds: float, view: JobView | None = None) -> JobView:
        """The job's view once it ended, or after ``seconds``. ``view``: the job as the caller knows it
        now (no read is needed before the wait)."""
        deadline = time.monotonic() + seconds
        while True:
            if self.ended is not None:
                return view_of(self.ended)
            if view is None:
                self.event.clear()  # before the read: an end published after it sets the event again
                view = await run_in_threadpool(self.records.view, self.job_id)
                if view is None:
                    raise ServiceError(ErrorCode.job_not_found, f"job {self.job_id} expired while waiting", "job_id")
            remaining = deadline - time.monotonic()
            if view.state in TERMINAL_STATES or remaining <= 0:
                return view
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), min(remaining, SAFETY_READ_S))
            view = None  # woken without the record, or the safety read is due


class JobWaiters:
    def __init__(self, records: JobRecords) -> None:
        self.records = records
        self._waiting: dict[str, list[Watch]] = {}
        self._lock = threading.Lock()
        self._stop: Callable[[], None] = records.kv.listen(ENDED, self._ended)

    def _ended(self, message: str) -> None:
        job_id, record = parse_ended(message)
        with self._lock:
            watches = list(self._waiting.get(job_id, []))
        for watch in watches:
            watch.deliver(record)

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[Watch]:
        """Watch for the job's end from now on (before the job is sent, so that no end is missed)."""
        watch = Watch(self.records, job_id)
        with self._lock:
            self._waiting.setdefault(job_id, []).append(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._waiting.get(job_id, [])
                watches.remove(watch)
                if not watches:
                    self._waiting.pop(job_id, None)

    async def wait(self, job_id: str, seconds: float) -> JobView:
        """The view of a job already sent, once it ended or after ``seconds``."""
        with self.watching(job_id) as watch:
            return await watch.until_end(seconds)

    def close(self) -> None:
        self._stop()
