"""Where job records and telemetry live: Redis (the service, ``core/kv_redis.py``) or memory (the
embedded mode, ``core/kv_memory.py``).

A small key-value interface with the few atomic operations the job path needs; everything about
what the keys mean is in :mod:`core.jobs` and :mod:`core.telemetry`, written once for both.
"""

from __future__ import annotations

import logging
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
