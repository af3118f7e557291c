"""Where job records and telemetry live: Redis (the service) or memory (the embedded mode).

A small key-value interface with the few atomic operations the job path needs; everything about
what the keys mean is in :mod:`core.jobs` and :mod:`core.telemetry`, written once for both.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

log = logging.getLogger(__name__)
Listener = Callable[[str], None]
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)  # the store is unreachable for now
Outcome = TypeVar("Outcome")
# A transaction: (the document or None, the store's clock) -> (the new document or None to leave it, an outcome).
Change = Callable[[dict[str, Any] | None, float], tuple[dict[str, Any] | None, Outcome]]


class KeyValue(ABC):
    @abstractmethod
    def now(self) -> float:
        """The store's clock (seconds): every process compares leases against the same one."""

    @abstractmethod
    def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def delete(self, *keys: str) -> None: ...

    @abstractmethod
    def transact(self, key: str, change: Change[Outcome], ttl_s: float) -> Outcome:
        """Apply ``change`` to the JSON document at ``key`` atomically; a new document keeps the key's
        TTL, or gets ``ttl_s`` when the key did not exist."""

    @abstractmethod
    def add(self, key: str, field: str, amount: float) -> None: ...

    @abstractmethod
    def fields(self, key: str) -> dict[str, float]: ...

    @abstractmethod
    def index(self, key: str, member: str, score: float | None) -> None:
        """Put ``member`` in the sorted set ``key`` with ``score``; None takes it out."""

    @abstractmethod
    def below(self, key: str, score: float) -> list[str]:
        """Members of the sorted set ``key`` scored at most ``score``."""

    @abstractmethod
    def push(self, key: str, member: str, ttl_s: float) -> None:
        """Append ``member`` to the list ``key`` (the list expires ``ttl_s`` after its last push)."""

    @abstractmethod
    def pop(self, key: str, count: int) -> list[str]:
        """Take up to ``count`` members from the head of the list ``key``."""

    @abstractmethod
    def scan(self, prefix: str) -> dict[str, bytes]:
        """Every live key starting with ``prefix``, with its value."""

    @abstractmethod
    def publish(self, channel: str, message: str) -> None:
        """Tell the listeners of ``channel`` (at most once; a listener that is away misses it)."""

    @abstractmethod
    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(message)`` for every message published on ``channel`` from now on, from another
        thread; returns the function that stops it."""

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None


class MemoryKeyValue(KeyValue):
    """One process: entries expire by the monotonic clock; one lock serialises every operation."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[float, bytes]] = {}
        self._counters: dict[str, dict[str, float]] = {}
        self._sets: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self._listeners: dict[str, list[Listener]] = {}
        self._lists: dict[str, list[str]] = {}

    def now(self) -> float:
        return time.time()

    def _live(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        with self._lock:
            self._expire()
            self._data[key] = (time.monotonic() + ttl_s, value)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    def transact(self, key: str, change: Change[Outcome], ttl_s: float) -> Outcome:
        with self._lock:
            raw = self._live(key)
            document, outcome = change(None if raw is None else json.loads(raw), self.now())
            if document is not None:
                deadline = self._data[key][0] if raw is not None else time.monotonic() + ttl_s
                self._data[key] = (deadline, json.dumps(document).encode())
            return outcome

    def add(self, key: str, field: str, amount: float) -> None:
        with self._lock:
            counters = self._counters.setdefault(key, {})
            counters[field] = counters.get(field, 0.0) + amount

    def fields(self, key: str) -> dict[str, float]:
        with self._lock:
            return dict(self._counters.get(key, {}))

    def index(self, key: str, member: str, score: float | None) -> None:
        with self._lock:
            members = self._sets.setdefault(key, {})
            if score is None:
                members.pop(member, None)
            else:
                members[member] = score

    def below(self, key: str, score: float) -> list[str]:
        with self._lock:
            return [member for member, value in self._sets.get(key, {}).items() if value <= score]

    def scan(self, prefix: str) -> dict[str, bytes]:
        with self._lock:
            return {key: value for key in list(self._data) if key.startswith(prefix) and (value := self._live(key))}

    def push(self, key: str, member: str, ttl_s: float) -> None:
        with self._lock:
            self._lists.setdefault(key, []).append(member)

    def pop(self, key: str, count: int) -> list[str]:
        with self._lock:
            members = self._lists.get(key, [])
            taken, self._lists[key] = members[:count], members[count:]
            return taken

    def publish(self, channel: str, message: str) -> None:
        for listener in list(self._listeners.get(channel, [])):
            listener(message)

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        self._listeners.setdefault(channel, []).append(listener)
        return lambda: self._listeners[channel].remove(listener)

    def _expire(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        for key in [k for k, (deadline, _) in self._data.items() if deadline < now]:
            del self._data[key]


class RedisKeyValue(KeyValue):
    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )

    def now(self) -> float:
        seconds, microseconds = self.client.time()
        return seconds + microseconds / 1e6

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.client.set(key, value, px=max(1, int(ttl_s * 1000)))

    def get(self, key: str) -> bytes | None:
        return self.client.get(key)

    def delete(self, *keys: str) -> None:
        if keys:
            self.client.delete(*keys)

    def transact(self, key: str, change: Change[Outcome], ttl_s: float) -> Outcome:
        import redis

        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    seconds, microseconds = pipe.time()
                    document, outcome = change(None if raw is None else json.loads(raw), seconds + microseconds / 1e6)
                    if document is None:
                        pipe.unwatch()
                        return outcome
                    pipe.multi()
                    if raw is None:
                        pipe.set(key, json.dumps(document), px=max(1, int(ttl_s * 1000)))
                    else:
                        pipe.set(key, json.dumps(document), keepttl=True)
                    pipe.execute()
                    return outcome
                except redis.WatchError:
                    continue

    def add(self, key: str, field: str, amount: float) -> None:
        self.client.hincrbyfloat(key, field, amount)

    def fields(self, key: str) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.client.hgetall(key).items()}

    def index(self, key: str, member: str, score: float | None) -> None:
        if score is None:
            self.client.zrem(key, member)
        else:
            self.client.zadd(key, {member: score})

    def below(self, key: str, score: float) -> list[str]:
        return [member.decode() for member in self.client.zrangebyscore(key, "-inf", score)]

    def scan(self, prefix: str) -> dict[str, bytes]:
        keys = list(self.client.scan_iter(match=f"{prefix}*", count=200))
        values = self.client.mget(keys) if keys else []
        return {key.decode(): value for key, value in zip(keys, values, strict=True) if value is not None}

    def push(self, key: str, member: str, ttl_s: float) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, member)
            pipe.expire(key, max(1, int(ttl_s)))
            pipe.execute()

    def pop(self, key: str, count: int) -> list[str]:
        return [member.decode() for member in self.client.lpop(key, count) or []]

    def publish(self, channel: str, message: str) -> None:
        self.client.publish(channel, message)

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """A thread on its own connection, subscribed again after the connection is lost. Returns once
        subscribed (or after 5 s, the store being away: the thread goes on trying)."""
        import redis

        stop, subscribed = threading.Event(), threading.Event()

        def run() -> None:
            pause = 0.5
            while not stop.is_set():
                try:
                    with redis.Redis.from_url(self.url, socket_connect_timeout=5) as client:
                        pubsub = client.pubsub(ignore_subscribe_messages=True)
                        pubsub.subscribe(channel)
                        pubsub.get_message(timeout=5.0)  # the confirmation: from here on, nothing is missed
                        subscribed.set()
                        pause = 0.5
                        while not stop.is_set():
                            message = pubsub.get_message(timeout=1.0)
                            if message is not None:
                                listener(message["data"].decode())
                except (*STORE_ERRORS, ValueError) as error:  # ValueError: the socket closed under the read
                    if stop.is_set():
                        return
                    log.warning("listening on %s: %s; again in %.1f s", channel, type(error).__name__, pause)
                    stop.wait(pause)
                    pause = min(pause * 2, 5.0)

        threading.Thread(target=run, name=f"xai-listen-{channel}", daemon=True).start()
        subscribed.wait(5.0)
        return stop.set

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()


def connect(redis_url: str | None) -> KeyValue:
    return MemoryKeyValue() if not redis_url else RedisKeyValue(redis_url)
