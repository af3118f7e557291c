"""The embedded mode's job process, seen from the API: started, watched, started again, stopped.

The process (``workers/job_process.py``) is a program the API starts, so that the API imports no torch;
it uses the API's in-memory store over a Unix socket (``core/kv_shared.py``) and takes job ids on its
channel. One thread here supervises it: it starts the process, waits for it to exit, and starts another
unless the API is closing (after a pause that doubles, up to 30 s, while processes keep dying young). A
process that exits before the first one ever loaded its models is a start-up failure: the API does not
start. Another thread reads the channel: ``loaded`` (then the jobs a predecessor left are sent again),
``done`` (a place in the queue is free again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from core.kv_memory import MemoryKeyValue
from core.kv_shared import JOB_CHANNEL, StoreServer
from core.settings import ALLOCATOR, Settings

log = logging.getLogger(__name__)
STOP_WAIT_S = 10.0  # how long a job process asked to stop is given before it is killed
RESTART_PAUSE_S = (1.0, 30.0)  # the first pause before a restart, and the longest
LIVED_S = 60.0  # a process that lived this long before dying restarts after the first pause again


class StartFailed(RuntimeError):
    """The first job process exited before it had loaded the models."""


class EmbeddedJobs:
    """Job ids to a supervised job process; ``embedded_queue`` of them at most, sent and not yet done."""

    def __init__(self, store: MemoryKeyValue, settings: Settings) -> None:
        self.settings = settings
        self.served: list[str] = []
        self.failed: dict[str, str] = {}
        self._slots = threading.BoundedSemaphore(settings.embedded_queue)
        self._lock = threading.Lock()  # the channel, the process, the outstanding jobs, closing
        self._outstanding: dict[str, None] = {}  # sent, not yet done: in order, for a new process
        self._channel: Connection | None = None
        self._process: subprocess.Popen | None = None
        self._closing = False
        self._closed = threading.Event()  # wakes the supervisor from its pause
        self._loaded = threading.Event()
        self._start_failure: str | None = None
        self._server = StoreServer(store, self._channel_opened)
        threading.Thread(target=self._supervise, name="xai-job-process", daemon=True).start()
        while not self._loaded.wait(0.5):
            if self._start_failure is not None:
                self._server.close()
                raise StartFailed(self._start_failure)

    @property
    def alive(self) -> bool:
        return self._channel is not None

    @property
    def waiting(self) -> int:
        return len(self._outstanding)

    def submit(self, job_id: str) -> bool:
        """Send the job to the process (or hold it for the next one while none is up); False when
        ``embedded_queue`` jobs are sent and not yet done."""
        if not self._slots.acquire(blocking=False):
            return False
        with self._lock:
            self._outstanding[job_id] = None
            if self._channel is not None:
                with contextlib.suppress(OSError):  # the process just died: the next one is given the job
                    self._channel.send(("run", job_id))
        return True

    def _start(self) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.job_process"], stdin=subprocess.PIPE, env={**os.environ, **ALLOCATOR}
        )
        given = {
            "address": self._server.address,
            "authkey": self._server.authkey.hex(),
            "settings": self.settings.model_dump(mode="json"),
        }
        assert process.stdin is not None
        with contextlib.suppress(OSError):  # it died at once: the supervisor sees it exit
            process.stdin.write(json.dumps(given).encode())
            process.stdin.close()
        return process

    def _supervise(self) -> None:
        pause = RESTART_PAUSE_S[0]
        while True:
            with self._lock:
                if self._closing:
                    return
                try:
                    self._process = process = self._start()
                except OSError as error:
                    process, code = None, f"could not start: {error}"
            started = time.monotonic()
            if process is not None:
                code = str(process.wait())
            with self._lock:
                if self._closing:
                    return
            if not self._loaded.is_set():
                self._start_failure = f"the job process exited with {code} before it had loaded the models"
                return
            log.error("the job process exited with %s; starting another", code)
            pause = RESTART_PAUSE_S[0] if time.monotonic() - started > LIVED_S else min(pause * 2, RESTART_PAUSE_S[1])
            if self._closed.wait(pause):
                return

    def _channel_opened(self, role: str, channel: Connection) -> None:
        if role != JOB_CHANNEL:
            channel.close()
            return
        threading.Thread(target=self._read, args=(channel,), name="xai-job-channel", daemon=True).start()

    def _read(self, channel: Connection) -> None:
        """One process's messages, until its channel closes."""
        while True:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                break
            if message[0] == "loaded":
                self._on_loaded(channel, list(message[1]), dict(message[2]))
            elif message[0] == "done":
                with self._lock:
                    known = message[1] in self._outstanding  # not a job its sweeper sent again
                    self._outstanding.pop(message[1], None)
                if known:
                    self._slots.release()
        with self._lock:
            if self._channel is channel:
                self._channel, self.served = None, []
        channel.close()

    def _on_loaded(self, channel: Connection, served: list[str], failed: dict[str, str]) -> None:
        with self._lock:
            if self._closing:
                with contextlib.suppress(OSError):
                    channel.send(("stop",))
                return
            self.served, self.failed, self._channel = served, failed, channel
            with contextlib.suppress(OSError):  # died already: the next one gets them
                for job_id in self._outstanding:  # what a predecessor left
                    channel.send(("run", job_id))
        self._loaded.set()

    def close(self) -> None:
        """Ask the process to stop, and kill it if it has not within ``STOP_WAIT_S`` (at once while it
        loads: it has no channel to be asked on yet)."""
        with self._lock:
            self._closing = True
            channel, process = self._channel, self._process
            if channel is not None:
                with contextlib.suppress(OSError):
                    channel.send(("stop",))
        self._closed.set()
        if process is not None:
            if channel is None:
                process.kill()
            try:
                process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_WAIT_S)
        self._server.close()
