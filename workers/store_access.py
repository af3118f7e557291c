"""How a worker talks to the store while its jobs run: writes tried again while the store is away,
and the leases of a batch renewed from a thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from core.jobs import JobRecords, Lease
from core.kv import STORE_ERRORS

log = logging.getLogger(__name__)
STORE_RETRY_S = 120.0  # how long a write waits for the store to come back
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store stayed away longer than ``STORE_RETRY_S``."""


def persist(write: Callable[[], T], what: str) -> T:
    """``write()``, tried again while the store is unreachable, for up to ``STORE_RETRY_S``."""
    deadline, pause = time.monotonic() + STORE_RETRY_S, 0.25
    while True:
        try:
            return write()
        except STORE_ERRORS as error:
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"{what}: the store stayed unreachable ({error})") from None
            log.warning("%s: store unreachable (%s); trying again in %.1f s", what, type(error).__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class LeaseKeeper:
    """Renews the leases of a batch every quarter of their length from one thread, and notes per job a
    cancellation or a loss."""

    def __init__(self, records: JobRecords, leases: list[Lease], lease_s: float) -> None:
        self.records, self.leases, self.lease_s = records, leases, lease_s
        self.lost: set[str] = set()
        self.cancel: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="xai-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            for lease in self.leases:
                if lease.job_id in self.lost:
                    continue
                try:
                    held, cancel = self.records.renew(lease, self.lease_s)
                except STORE_ERRORS as error:
                    log.warning("job %s: lease not renewed, store unreachable (%s)", lease.job_id, error)
                    continue
                if cancel:
                    self.cancel.add(lease.job_id)
                if not held:
                    self.lost.add(lease.job_id)
