"""The embedded mode's store, lent to its job process: a :class:`~core.kv_memory.MemoryKeyValue` in the
API process, served over a Unix socket to the process that runs the jobs (``workers/job_process.py``).

The jobs run in a process of their own so that they never share an interpreter lock with the API's
requests (lenet5-shapes under 16 clients: 391–416 jobs/s with the jobs on a thread of the API, 447–449
in a process; docs/architecture.md, "The embedded job process"), and the API imports no torch.

A transaction is computed where it is asked for, as with Redis (``core/kv_redis.py``): one call reads
the documents and the store's clock, one compare-and-set writes each new document and its effects if
the document is still the one read, and a transaction whose document changed goes round again. The
changes are functions of the job path, which do not travel; their writes, plain bytes and effect
tuples, do. Connections are ``multiprocessing.connection``'s, authenticated with a key made for the
process (HMAC challenge), kept in a pool: a call takes an idle one (or opens one) and gives it back, so
the short-lived threads of the job path (a batch's lease keeper) leave no connection behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from core.kv import Admission, Effect, KeyValue, Transaction, Write, compute_changes
from core.kv_memory import MemoryKeyValue

log = logging.getLogger(__name__)
STORE_ROLE = "store"  # the first message of a connection that makes store calls
JOB_CHANNEL = "jobs"  # the first message of the job process's channel (app/embedded_jobs.py)
FAMILY = "AF_UNIX"
# What a job process may call on the API's store; everything else is refused.
CALLS = frozenset(
    {
        "now",
        "get",
        "get_many",
        "apply",
        "fields",
        "below",
        "apply_if_admitted",
        "scan",
        "pop",
        "read_with_clock",
        "compare_and_set",
    }
)


class StoreServer:
    """Serves ``kv`` on a Unix socket in a private directory. A connection whose first message is
    ``STORE_ROLE`` gets a thread answering its calls; any other first message hands the connection to
    ``on_channel(role, connection)`` (the job process's channel, ``app/embedded_jobs.py``)."""

    def __init__(self, kv: MemoryKeyValue, on_channel: Callable[[str, Connection], None]) -> None:
        self.kv, self._on_channel = kv, on_channel
        self._directory = tempfile.mkdtemp(prefix="xai-store-")
        os.chmod(self._directory, 0o700)
        self.address = os.path.join(self._directory, "store")
        self.authkey = secrets.token_bytes(32)
        self._listener = Listener(self.address, FAMILY, authkey=self.authkey)
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="xai-store-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection = self._listener.accept()
                role = connection.recv()
            except (OSError, EOFError, AuthenticationError) as error:  # closed, or a peer without the key
                if not self._closed.is_set():
                    log.warning("the job process's connection failed: %s", type(error).__name__)
                continue
            if role == STORE_ROLE:
                threading.Thread(target=self._serve, args=(connection,), name="xai-store", daemon=True).start()
            else:
                self._on_channel(role, connection)

    def _serve(self, connection: Connection) -> None:
        with connection:
            while True:
                try:
                    name, args = connection.recv()
                except (OSError, EOFError):
                    return
                except Exception as error:  # a request that does not unpickle
                    connection.send((False, RuntimeError(f"the store could not read a call: {error!r}")))
                    continue
                try:
                    if name not in CALLS:
                        raise ValueError(f"the store has no call {name!r}")
                    reply: tuple[bool, Any] = (True, getattr(self.kv, name)(*args))
                except Exception as error:  # the caller raises it
                    reply = (False, error)
                try:
                    connection.send(reply)
                except OSError:
                    return
                except Exception as error:  # a reply that does not pickle: an error, not a lost store
                    connection.send((False, RuntimeError(f"the store's reply to {name} failed: {error!r}")))

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        shutil.rmtree(self._directory, ignore_errors=True)


class SharedKeyValue(KeyValue):
    """The job process's view of the API's store (:class:`StoreServer`). A store that went away (the
    API stopped) raises ``ConnectionError``, one of ``STORE_ERRORS``, as Redis's client would."""

    def __init__(self, address: str, authkey: bytes) -> None:
        self.address, self._authkey = address, authkey
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def _call(self, name: str, *args: Any) -> Any:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        try:
            if connection is None:
                connection = Client(self.address, FAMILY, authkey=self._authkey)
                connection.send(STORE_ROLE)
            connection.send((name, args))
            ok, value = connection.recv()
        except (OSError, EOFError, AuthenticationError) as error:
            if connection is not None:
                with contextlib.suppress(OSError):
                    connection.close()
            raise ConnectionError(f"the API's store is unreachable: {type(error).__name__}") from None
        with self._lock:
            self._idle.append(connection)
        if not ok:
            raise value
        return value

    def now(self) -> float:
        return self._call("now")

    def get(self, key: str) -> bytes | None:
        return self._call("get", key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._call("get_many", list(keys)) if keys else []

    def apply(self, effects: Sequence[Effect]) -> None:
        self._call("apply", list(effects))

    def transact_many(self, transactions: Sequence[Transaction[Any]]) -> list[Any]:
        """One read of every document with the clock, then one compare-and-set of every write; the
        transactions whose document changed meanwhile go round again."""
        outcomes: list[Any] = [None] * len(transactions)
        pending = list(range(len(transactions)))
        while pending:
            raws, now = self._call("read_with_clock", [transactions[index].key for index in pending])
            changes = compute_changes(transactions, pending, raws, now, outcomes)
            if not changes:
                break
            writes: list[Write] = [
                (
                    transactions[change.index].key,
                    change.read,
                    None if change.document is None else json.dumps(change.document).encode(),
                    transactions[change.index].ttl_s,
                    change.effects,
                )
                for change in changes
            ]
            landed = self._call("compare_and_set", writes)
            pending = [change.index for change, done in zip(changes, landed, strict=True) if not done]
        return outcomes

    def fields(self, key: str) -> dict[str, float]:
        return self._call("fields", key)

    def below(self, key: str, score: float) -> list[str]:
        return self._call("below", key, score)

    def apply_if_admitted(self, admissions: Sequence[Admission], effects: Sequence[Effect]) -> int | None:
        return self._call("apply_if_admitted", list(admissions), list(effects))

    def pop(self, key: str, count: int) -> list[str]:
        return self._call("pop", key, count)

    def scan(self, prefix: str) -> dict[str, bytes]:
        return self._call("scan", prefix)

    def listen(self, channel: str, listener: Callable[[str], None]) -> Callable[[], None]:
        raise NotImplementedError("the job process does not listen: the API's store tells its own listeners")

    def ping(self) -> bool:
        self.now()
        return True

    def close(self) -> None:
        with self._lock:
            connections, self._idle = self._idle, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.close()
