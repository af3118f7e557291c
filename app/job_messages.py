"""The Celery messages of new jobs, as few as the load allows: one per batch the worker will run.

Every job keeps a message (a job whose message is lost would wait forever; the worker's batches only
take jobs whose messages are already queued). Under load most of those messages arrive at the worker
after their job already ran in another job's batch, and each still costs the API a publish and the
worker's consumer a receive, a hand-over to its pool and an acknowledgement: about 1 ms of CPU per job
for lenet5-shapes (docs/benchmarks.md). So jobs that share a batch key (``JobSpec.batch_key``) and are
created while their model's previous message is being sent, or within ``batch_window_ms`` of it, go in
one message (``run_job(id, id, ...)``), up to ``batch_max_images`` images: the batch the worker would
have formed from them anyway. A job that finds its model's last message older than the window is sent
at once: a single client never waits for the window.

One thread sends, so the requests that wait for it never contend for the broker connection; each
request waits for its own message and gets the send's error if it failed, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.contract import JobSpec

Send = Callable[[str, list[str]], None]  # (model, job ids): one message


@dataclass
class _Waiting:
    spec: JobSpec
    sent: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class JobMessages:
    def __init__(self, send: Send, window_s: float, max_images: int) -> None:
        self._send, self._window_s, self._max_images = send, window_s, max_images
        self._waiting: list[_Waiting] = []
        self._last_sent: dict[str, float] = {}  # model -> when its last message went
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="xai-messages", daemon=True)
        self._thread.start()

    def send(self, spec: JobSpec) -> None:
        """Queue the job's message and wait until it is sent; raises what sending it raised."""
        waiting = _Waiting(spec)
        with self._ready:
            if self._closed:
                raise RuntimeError("the job messages are closed")
            self._waiting.append(waiting)
            self._ready.notify()
        waiting.sent.wait()
        if waiting.error is not None:
            raise waiting.error

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closed:
                    self._ready.wait()
                if self._closed:
                    for waiting in self._waiting:
                        waiting.error = RuntimeError("the job messages are closed")
                        waiting.sent.set()
                    return
                # Under load (the model's last message went less than the window ago): let the batch gather.
                deadline = self._last_sent.get(self._waiting[0].spec.model, float("-inf")) + self._window_s
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._ready.wait(left)  # woken by each new job too: wait out the rest
                taken, self._waiting = self._waiting, []
            for model, group in self._groups(taken):
                self._deliver(model, group)

    def _groups(self, taken: list[_Waiting]) -> list[tuple[str, list[_Waiting]]]:
        """The jobs taken, by batch key in the order they came, each group within the image budget."""
        groups: list[tuple[str, list[_Waiting]]] = []
        filling: dict[str, list[_Waiting]] = {}  # batch key -> its group still open
        for waiting in taken:
            key = waiting.spec.batch_key()
            group = filling.get(key)
            images = waiting.spec.image_count + sum(mate.spec.image_count for mate in group or [])
            if group is None or images > self._max_images:
                group = filling[key] = []
                groups.append((waiting.spec.model, group))
            group.append(waiting)
        return groups

    def _deliver(self, model: str, group: list[_Waiting]) -> None:
        try:
            self._send(model, [waiting.spec.job_id for waiting in group])
        except BaseException as error:  # every request of the group answers with it
            for waiting in group:
                waiting.error = error
        finally:
            self._last_sent[model] = time.monotonic()
            for waiting in group:
                waiting.sent.set()
