"""Our own record of every job, beside whatever the transport keeps.

Celery's result store answers PENDING for an id it never saw; this record answers "no such job"
(404) for an unknown or expired id. It holds the state, progress, timestamps, the spec, the
uploaded images, the result and the rendered PNGs, all expiring together after the result TTL.
Two implementations with one interface: Redis (the service) and memory (the embedded mode).
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Any

from app.contract import JobSpec, JobView

_PREFIX = "xai:job:"
_METRICS = "xai:metrics"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))


class JobStore(ABC):
    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s

    # -- raw storage, per implementation --
    @abstractmethod
    def _put(self, key: str, value: bytes, ttl_s: int) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def _update(self, key: str, change: dict[str, Any], states: Collection[str] | None) -> dict[str, Any] | None:
        """Merge ``change`` into the JSON document at ``key`` atomically, if its ``state`` is one of
        ``states`` (any state when None). Returns the merged document, or None when nothing changed."""

    @abstractmethod
    def _add(self, key: str, field: str, amount: float) -> None: ...

    @abstractmethod
    def _fields(self, key: str) -> dict[str, float]: ...

    # -- metrics the workers record and the API exports --
    def record_duration(self, method: str, seconds: float) -> None:
        self._add(f"{_METRICS}:duration_sum", method, seconds)
        for bound in DURATION_BUCKETS:
            if seconds <= bound:
                self._add(f"{_METRICS}:duration_bucket", f"{method}|{bound}", 1)

    def record_failure(self, code: str) -> None:
        self._add(f"{_METRICS}:failures", code, 1)

    def durations(self) -> tuple[dict[str, float], dict[str, float]]:
        """(sum of seconds by method, cumulative count by 'method|bound')."""
        return self._fields(f"{_METRICS}:duration_sum"), self._fields(f"{_METRICS}:duration_bucket")

    def failures(self) -> dict[str, float]:
        return self._fields(f"{_METRICS}:failures")

    # -- jobs --
    def create(self, spec: JobSpec, images: list[bytes]) -> JobView:
        view = JobView(
            job_id=spec.job_id,
            state="queued",
            progress=0.0,
            model=spec.model,
            methods=[m.name for m in spec.methods],
            created_at=time.time(),
        )
        for index, image in enumerate(images):
            self._put(f"{_PREFIX}{spec.job_id}:image:{index}", image, self.ttl_s)
        self._put(f"{_PREFIX}{spec.job_id}:spec", spec.model_dump_json().encode(), self.ttl_s)
        self._put(f"{_PREFIX}{spec.job_id}", view.model_dump_json().encode(), self.ttl_s)
        return view

    def view(self, job_id: str) -> JobView | None:
        raw = self._get(f"{_PREFIX}{job_id}")
        return None if raw is None else JobView.model_validate_json(raw)

    def spec(self, job_id: str) -> JobSpec | None:
        raw = self._get(f"{_PREFIX}{job_id}:spec")
        return None if raw is None else JobSpec.model_validate_json(raw)

    def image(self, job_id: str, index: int) -> bytes | None:
        return self._get(f"{_PREFIX}{job_id}:image:{index}")

    def update(self, job_id: str, *, only_from: Collection[str] | None = None, **change: Any) -> JobView | None:
        """Change the job record; with ``only_from``, only if its state is one of those."""
        merged = self._update(f"{_PREFIX}{job_id}", json.loads(json.dumps(change, default=_jsonable)), only_from)
        return None if merged is None else JobView.model_validate(merged)

    def put_png(self, job_id: str, name: str, png: bytes) -> None:
        self._put(f"{_PREFIX}{job_id}:png:{name}", png, self.ttl_s)

    def png(self, job_id: str, name: str) -> bytes | None:
        return self._get(f"{_PREFIX}{job_id}:png:{name}")

    # -- what workers publish about themselves --
    def put_layers(self, model: str, layers: list[str]) -> None:
        self._put(f"xai:layers:{model}", json.dumps(layers).encode(), 7 * 24 * 3600)

    def layers(self, model: str) -> list[str] | None:
        raw = self._get(f"xai:layers:{model}")
        return None if raw is None else json.loads(raw)

    def heartbeat(self, worker: str, models: list[str], ttl_s: int = 15) -> None:
        self._put(f"xai:worker:{worker}", json.dumps({"models": models, "at": time.time()}).encode(), ttl_s)

    def request_cancel(self, job_id: str) -> None:
        self._put(f"{_PREFIX}{job_id}:cancel", b"1", self.ttl_s)

    def cancel_requested(self, job_id: str) -> bool:
        return self._get(f"{_PREFIX}{job_id}:cancel") is not None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot store {type(value).__name__}")


class MemoryJobStore(JobStore):
    """For the embedded mode: one process, entries expire by timestamp."""

    def __init__(self, ttl_s: int) -> None:
        super().__init__(ttl_s)
        self._data: dict[str, tuple[float, bytes]] = {}
        self._counters: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def _put(self, key: str, value: bytes, ttl_s: int) -> None:
        with self._lock:
            self._expire()
            self._data[key] = (time.monotonic() + ttl_s, value)

    def _get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None or entry[0] < time.monotonic():
                return None
            return entry[1]

    def _update(self, key: str, change: dict[str, Any], states: Collection[str] | None) -> dict[str, Any] | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None or entry[0] < time.monotonic():
                return None
            current = json.loads(entry[1])
            if states is not None and current.get("state") not in states:
                return None
            merged = {**current, **change}
            self._data[key] = (entry[0], json.dumps(merged).encode())
            return merged

    def _add(self, key: str, field: str, amount: float) -> None:
        with self._lock:
            counters = self._counters.setdefault(key, {})
            counters[field] = counters.get(field, 0.0) + amount

    def _fields(self, key: str) -> dict[str, float]:
        with self._lock:
            return dict(self._counters.get(key, {}))

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (deadline, _) in self._data.items() if deadline < now]:
            del self._data[key]


class RedisJobStore(JobStore):
    def __init__(self, url: str, ttl_s: int) -> None:
        import redis

        super().__init__(ttl_s)
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def _put(self, key: str, value: bytes, ttl_s: int) -> None:
        self.client.set(key, value, ex=ttl_s)

    def _get(self, key: str) -> bytes | None:
        return self.client.get(key)

    def _add(self, key: str, field: str, amount: float) -> None:
        self.client.hincrbyfloat(key, field, amount)

    def _fields(self, key: str) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.client.hgetall(key).items()}

    def workers(self) -> dict[str, dict[str, Any]]:
        """Workers whose heartbeat has not expired, with the models they serve."""
        found = {}
        for key in self.client.scan_iter(match="xai:worker:*", count=100):
            raw = self.client.get(key)
            if raw is not None:
                found[key.decode().removeprefix("xai:worker:")] = json.loads(raw)
        return found

    def _update(self, key: str, change: dict[str, Any], states: Collection[str] | None) -> dict[str, Any] | None:
        import redis

        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    current = None if raw is None else json.loads(raw)
                    if current is None or (states is not None and current.get("state") not in states):
                        pipe.unwatch()
                        return None
                    merged = {**current, **change}
                    pipe.multi()
                    pipe.set(key, json.dumps(merged), keepttl=True)
                    pipe.execute()
                    return merged
                except redis.WatchError:
                    continue
