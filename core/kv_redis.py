"""The key-value store of the service: Redis, shared by the API and every worker.

A transaction is one read (the document and the server's clock, pipelined) and one compare-and-set
script that writes the new document and the effects only if the document is still what was read: two
round trips, where WATCH / MULTI / EXEC takes four.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from core.kv import STORE_ERRORS, Admission, Effect, KeyValue, Listener, Transaction, compute_changes

log = logging.getLogger(__name__)

# The effects from ARGV[i] on, each as its word count followed by the words of its command.
_RUN_EFFECTS = """
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
"""

# KEYS[1]: the document. ARGV: read? (1/0), the document read, write? (1/0), the new document, its TTL
# in ms when the key is new, then each effect as its word count followed by the words of its command.
_COMPARE_AND_SET = (
    """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[3] == '1' then
  if current then
    redis.call('SET', KEYS[1], ARGV[4], 'KEEPTTL')
  else
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  end
end
local i = 6
"""
    + _RUN_EFFECTS
    + """
return 1
"""
)


# ARGV: the number of admissions, then each as its sorted set, member, most and max age in seconds,
# then each effect as in _COMPARE_AND_SET. Returns 0, or the (1-based) admission refused.
_ADMIT_THEN_APPLY = (
    """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local score = string.format('%.6f', now)
local count = tonumber(ARGV[1])
local i = 2
for a = 1, count do
  local key, member = ARGV[i], ARGV[i + 1]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.6f', now - tonumber(ARGV[i + 3])))
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then
    for b = 1, a - 1 do
      local j = 2 + (b - 1) * 4
      redis.call('ZREM', ARGV[j], ARGV[j + 1])
    end
    return a
  end
  redis.call('ZADD', key, score, member)
  i = i + 4
end
"""
    + _RUN_EFFECTS
    + """
return 0
"""
)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def commands(effect: Effect) -> Iterator[list[Any]]:
    """The Redis commands of one effect (``core/kv.py``)."""
    kind, *args = effect
    if kind == "put":
        key, value, ttl_s = args
        yield ["SET", key, value, "PX", _ms(ttl_s)]
    elif kind == "delete":
        if args:
            yield ["DEL", *args]
    elif kind == "add":
        key, field, amount = args
        yield ["HINCRBYFLOAT", key, field, repr(float(amount))]
    elif kind == "index":
        key, member, score = args
        yield ["ZREM", key, member] if score is None else ["ZADD", key, repr(float(score)), member]
    elif kind == "push":
        key, member, ttl_s = args
        yield ["RPUSH", key, member]
        yield ["EXPIRE", key, max(1, int(ttl_s))]
    elif kind == "publish":
        channel, message = args
        yield ["PUBLISH", channel, message]
    else:
        raise ValueError(f"unknown effect {kind!r}")


class RedisKeyValue(KeyValue):
    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )
        self._compare_and_set = self.client.register_script(_COMPARE_AND_SET)
        self._admit_then_apply = self.client.register_script(_ADMIT_THEN_APPLY)

    def now(self) -> float:
        seconds, microseconds = self.client.time()
        return seconds + microseconds / 1e6

    def get(self, key: str) -> bytes | None:
        return self.client.get(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(self.client.mget(keys)) if keys else []

    def apply(self, effects: Sequence[Effect]) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            for effect in effects:
                for command in commands(effect):
                    pipe.execute_command(*command)
            pipe.execute()

    def transact_many(self, transactions: Sequence[Transaction[Any]]) -> list[Any]:
        """One pipelined read of every document and the clock, then one pipeline of compare-and-set
        scripts; the transactions whose document changed meanwhile go round again."""
        outcomes: list[Any] = [None] * len(transactions)
        pending = list(range(len(transactions)))
        while pending:
            with self.client.pipeline(transaction=False) as pipe:
                for index in pending:
                    pipe.get(transactions[index].key)
                pipe.time()
                *raws, (seconds, microseconds) = pipe.execute()
            now = seconds + microseconds / 1e6
            writes: list[tuple[int, list[Any]]] = []
            for change in compute_changes(transactions, pending, raws, now, outcomes):
                document, ttl_s = change.document, transactions[change.index].ttl_s
                args: list[Any] = ["0" if change.read is None else "1", change.read or b""]
                args += ["0", b"", 0] if document is None else ["1", json.dumps(document), _ms(ttl_s)]
                for effect in change.effects:
                    for command in commands(effect):
                        args += [len(command), *command]
                writes.append((change.index, args))
            if not writes:
                break
            with self.client.pipeline(transaction=False) as pipe:
                for index, args in writes:
                    self._compare_and_set(keys=[transactions[index].key], args=args, client=pipe)
                landed = pipe.execute()
            pending = [index for (index, _), done in zip(writes, landed, strict=True) if not done]
        return outcomes

    def fields(self, key: str) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.client.hgetall(key).items()}

    def below(self, key: str, score: float) -> list[str]:
        return [member.decode() for member in self.client.zrangebyscore(key, "-inf", score)]

    def apply_if_admitted(self, admissions: Sequence[Admission], effects: Sequence[Effect]) -> int | None:
        """One script: the admissions against the server's clock, then the effects (job creation: the
        queue's and the client's caps, the spec, pixels and record, in one round trip where it took four)."""
        args: list[Any] = [len(admissions)]
        for admission in admissions:
            args += [admission.key, admission.member, admission.most, repr(float(admission.max_age_s))]
        for effect in effects:
            for command in commands(effect):
                args += [len(command), *command]
        refused = int(self._admit_then_apply(args=args))
        return None if refused == 0 else refused - 1

    def scan(self, prefix: str) -> dict[str, bytes]:
        keys = list(self.client.scan_iter(match=f"{prefix}*", count=200))
        values = self.client.mget(keys) if keys else []
        return {key.decode(): value for key, value in zip(keys, values, strict=True) if value is not None}

    def pop(self, key: str, count: int) -> list[str]:
        return [member.decode() for member in self.client.lpop(key, count) or []]

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
