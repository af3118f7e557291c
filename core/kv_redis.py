"""The key-value store of the service: Redis, shared by the API and every worker."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from core.kv import STORE_ERRORS, Change, KeyValue, Listener, Outcome

log = logging.getLogger(__name__)


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
