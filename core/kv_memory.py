"""The key-value store of the embedded mode: one process, one lock."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from core.kv import Admission, Effect, KeyValue, Listener, Transaction, Write


class MemoryKeyValue(KeyValue):
    """One process: entries expire by the monotonic clock; one lock serialises every operation.
    Listeners are called after the lock is released, on the thread that published."""

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

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._live(key) for key in keys]

    def apply(self, effects: Sequence[Effect]) -> None:
        with self._lock:
            published = self._apply(effects)
        self._tell(published)

    def transact_many(self, transactions: Sequence[Transaction[Any]]) -> list[Any]:
        outcomes, published = [], []
        with self._lock:
            for transaction in transactions:
                raw = self._live(transaction.key)
                read = None if raw is None else json.loads(raw)
                document, outcome = transaction.change(read, self.now())
                if document is not None:
                    self._put_document(transaction.key, raw, json.dumps(document).encode(), transaction.ttl_s)
                effects = transaction.effects(outcome, read) if transaction.effects is not None else []
                published += self._apply(effects)
                outcomes.append(outcome)
        self._tell(published)
        return outcomes

    def read_with_clock(self, keys: Sequence[str]) -> tuple[list[bytes | None], float]:
        """The documents at ``keys`` and the store's clock: the read half of a transaction computed in
        another process (``core/kv_shared.py``), as Redis's ``GET`` + ``TIME``."""
        with self._lock:
            return [self._live(key) for key in keys], self.now()

    def compare_and_set(self, writes: Sequence[Write]) -> list[bool]:
        """The write half: each write lands, with its effects, only if its document is still the bytes
        read (None: still absent); whether each landed, as Redis's compare-and-set script."""
        landed, published = [], []
        with self._lock:
            for key, expected, document, ttl_s, effects in writes:
                raw = self._live(key)
                if raw != expected:
                    landed.append(False)
                    continue
                if document is not None:
                    self._put_document(key, raw, document, ttl_s)
                published += self._apply(effects)
                landed.append(True)
        self._tell(published)
        return landed

    def _put_document(self, key: str, raw: bytes | None, document: bytes, ttl_s: float) -> None:
        """A transaction's new document (the lock held): it keeps the key's TTL, or gets ``ttl_s`` when the
        key was absent (``raw`` None)."""
        deadline = self._data[key][0] if raw is not None else time.monotonic() + ttl_s
        self._data[key] = (deadline, document)

    def _apply(self, effects: Sequence[Effect]) -> list[tuple[str, str]]:
        """Apply the effects (the lock held); the messages to publish once it is released."""
        published = []
        for kind, *args in effects:
            if kind == "put":
                key, value, ttl_s = args
                self._expire()
                self._data[key] = (time.monotonic() + ttl_s, value)
            elif kind == "delete":
                for key in args:
                    self._data.pop(key, None)
            elif kind == "add":
                key, field, amount = args
                counters = self._counters.setdefault(key, {})
                counters[field] = counters.get(field, 0.0) + amount
            elif kind == "index":
                key, member, score = args
                members = self._sets.setdefault(key, {})
                if score is None:
                    members.pop(member, None)
                else:
                    members[member] = score
            elif kind == "push":
                key, member, _ttl_s = args
                self._lists.setdefault(key, []).append(member)
            elif kind == "publish":
                published.append((args[0], args[1]))
            else:
                raise ValueError(f"unknown effect {kind!r}")
        return published

    def _tell(self, published: list[tuple[str, str]]) -> None:
        for channel, message in published:
            for listener in list(self._listeners.get(channel, [])):
                listener(message)

    def fields(self, key: str) -> dict[str, float]:
        with self._lock:
            return dict(self._counters.get(key, {}))

    def below(self, key: str, score: float) -> list[str]:
        with self._lock:
            return [member for member, value in self._sets.get(key, {}).items() if value <= score]

    def apply_if_admitted(self, admissions: Sequence[Admission], effects: Sequence[Effect]) -> int | None:
        with self._lock:
            now, added = self.now(), []
            for index, admission in enumerate(admissions):
                members = self._sets.setdefault(admission.key, {})
                for stale in [name for name, score in members.items() if score < now - admission.max_age_s]:
                    del members[stale]
                if len(members) >= admission.most:
                    for key, member in added:
                        self._sets[key].pop(member, None)
                    return index
                members[admission.member] = now
                added.append((admission.key, admission.member))
            published = self._apply(effects)
        self._tell(published)
        return None

    def scan(self, prefix: str) -> dict[str, bytes]:
        with self._lock:
            return {key: value for key in list(self._data) if key.startswith(prefix) and (value := self._live(key))}

    def pop(self, key: str, count: int) -> list[str]:
        with self._lock:
            members = self._lists.get(key, [])
            taken, self._lists[key] = members[:count], members[count:]
            return taken

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
