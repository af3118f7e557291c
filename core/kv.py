"""Where job records and telemetry live: Redis (the service, ``core/kv_redis.py``) or memory (the
embedded mode, ``core/kv_memory.py``).

A small key-value interface with the few atomic operations the job path needs; everything about
what the keys mean is in :mod:`core.jobs` and :mod:`core.telemetry`, written once for both.

Writes are *effects*, tuples a store applies in one round trip, several at once (:meth:`KeyValue.apply`)
or atomically with a change of a document (:meth:`KeyValue.transact`):

- ``("put", key, value: bytes, ttl_s)``
- ``("delete", key, ...)``
- ``("add", key, field, amount)``: a counter in the hash ``key``
- ``("index", key, member, score)``: into the sorted set ``key``; a score of None takes it out
- ``("push", key, member, ttl_s)``: appended to the list ``key``, which expires ``ttl_s`` after
  its last push
- ``("publish", channel, message)``: to the listeners of ``channel`` (at most once; a listener
  that is away misses it)
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.exceptions import RedisError

log = logging.getLogger(__name__)
Listener = Callable[[str], None]
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)  # the store is unreachable for now
Outcome = TypeVar("Outcome")
Document = dict[str, Any]
Effect = tuple[Any, ...]
# A transaction: (the document or None, the store's clock) -> (the new document or None to leave it, an outcome).
Change = Callable[[Document | None, float], tuple[Document | None, Outcome]]
# What else the transaction writes, from its outcome and the document as it was read.
Effects = Callable[[Outcome, Document | None], Sequence[Effect]]
# The write half of a transaction computed away from its store: the key, the document as read (None:
# absent), the new document (None: leave it), its TTL when the key is new, the effects.
Write = tuple[str, bytes | None, bytes | None, float, Sequence[Effect]]


@dataclass(frozen=True)
class Admission:
    """A place in a bounded set (:meth:`KeyValue.apply_if_admitted`): ``member`` into the sorted set
    ``key`` while it holds fewer than ``most`` members younger than ``max_age_s``."""

    key: str
    member: str
    most: int
    max_age_s: float


@dataclass
class Transaction(Generic[Outcome]):
    """A change of the JSON document at ``key`` and its effects (:meth:`KeyValue.transact`)."""

    key: str
    change: Change[Outcome]
    ttl_s: float
    effects: Effects[Outcome] | None = None


@dataclass(frozen=True)
class Computed:
    """A transaction's change, computed away from the store: what to compare and set."""

    index: int  # of the transaction
    read: bytes | None  # the document as read (None: absent)
    document: Document | None  # the new document (None: leave it)
    effects: list[Effect]


def compute_changes(
    transactions: Sequence[Transaction[Any]],
    pending: list[int],
    raws: Sequence[bytes | None],
    now: float,
    outcomes: list[Any],
) -> list[Computed]:
    """The changes of the ``pending`` transactions on the documents read (``raws``) at the store's clock
    ``now``, their outcomes into ``outcomes``; those that write nothing and have no effects are left out.
    The half of a transaction a store computed in the caller's process does (Redis, the lent store)."""
    computed = []
    for index, raw in zip(pending, raws, strict=True):
        transaction = transactions[index]
        read = None if raw is None else json.loads(raw)
        document, outcomes[index] = transaction.change(read, now)
        extra = list(transaction.effects(outcomes[index], read)) if transaction.effects is not None else []
        if document is not None or extra:
            computed.append(Computed(index, raw, document, extra))
    return computed


class KeyValue(ABC):
    @abstractmethod
    def now(self) -> float:
        """The store's clock (seconds): every process compares leases against the same one."""

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys``, in one round trip."""

    @abstractmethod
    def apply(self, effects: Sequence[Effect]) -> None:
        """Apply the effects in order, in one round trip, atomically."""

    def transact(
        self, key: str, change: Change[Outcome], ttl_s: float, effects: Effects[Outcome] | None = None
    ) -> Outcome:
        """Apply ``change`` to the JSON document at ``key`` atomically, with ``effects(outcome, document
        as read)`` in the same step; a new document keeps the key's TTL, or gets ``ttl_s`` when the key
        did not exist."""
        return self.transact_many([Transaction(key, change, ttl_s, effects)])[0]

    @abstractmethod
    def transact_many(self, transactions: Sequence[Transaction[Any]]) -> list[Any]:
        """Several transactions (on different keys), each atomic on its own, in as few round trips as
        the store allows; their outcomes in order."""

    @abstractmethod
    def fields(self, key: str) -> dict[str, float]: ...

    @abstractmethod
    def below(self, key: str, score: float) -> list[str]:
        """Members of the sorted set ``key`` scored at most ``score``."""

    @abstractmethod
    def apply_if_admitted(self, admissions: Sequence[Admission], effects: Sequence[Effect]) -> int | None:
        """In one round trip, atomically: admit ``member`` into each admission's sorted set, scored with
        the store's clock, unless the set holds ``most`` members already (members older than ``max_age_s``
        no longer count and are dropped); if every admission passed, apply ``effects``. Returns the index
        of the first admission refused (then nothing is kept), or None."""

    @abstractmethod
    def pop(self, key: str, count: int) -> list[str]:
        """Take up to ``count`` members from the head of the list ``key``."""

    @abstractmethod
    def scan(self, prefix: str) -> dict[str, bytes]:
        """Every live key starting with ``prefix``, with its value."""

    @abstractmethod
    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(message)`` for every message published on ``channel`` from now on, from another
        thread; returns the function that stops it."""

    # -- single writes, each one effect --
    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.apply([("put", key, value, ttl_s)])

    def delete(self, *keys: str) -> None:
        self.apply([("delete", *keys)])

    def add(self, key: str, field: str, amount: float) -> None:
        self.apply([("add", key, field, amount)])

    def index(self, key: str, member: str, score: float | None) -> None:
        self.apply([("index", key, member, score)])

    def push(self, key: str, member: str, ttl_s: float) -> None:
        self.apply([("push", key, member, ttl_s)])

    def publish(self, channel: str, message: str) -> None:
        self.apply([("publish", channel, message)])

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None
