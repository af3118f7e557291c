"""Real parts for the service tests: a redis-server on a free port, a Celery worker process, the API
served by uvicorn in a subprocess — in both modes (embedded, and Celery over Redis)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not on PATH; install Redis (apt install redis-server)")
    return found


class RedisServer:
    """A throwaway redis-server the tests may stop and start again on the same port."""

    def __init__(self, directory: Path, appendonly: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with redis.Redis.from_url(self.url) as client:
            wait_until(lambda: _pings(client), 10, "redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the append-only file holds survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def child_pids(pid: int) -> list[int]:
    """The running children of a process, started by any of its threads (``/proc/<pid>/task/<tid>/children``
    lists only those of thread ``tid``: the embedded API starts its job process from a thread)."""
    children: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return children
    for task in tasks:
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def wait_until(check, timeout: float, message: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(message)


def service_env(pythonpath: str | None = None, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XAI_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    env.update({f"XAI_{key.upper()}": value for key, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Process:
    """A subprocess of ours whose output goes to a log file (shown when a test fails to start it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("a")
        self.process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill_group(self) -> None:
        """SIGKILL the process and every child of it (a worker's prefork children too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.handle.close()

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
        with contextlib.suppress(ProcessLookupError):  # a prefork child left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        self.handle.close()


def start_api(tmp: Path, name: str, **settings: str) -> tuple[Process, str]:
    port = free_port()
    process = Process(
        [sys.executable, "-m", "app.cli", "serve"], service_env(port=str(port), **settings), tmp / f"{name}.log"
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not process.alive():
            raise RuntimeError(f"the API exited:\n{process.tail()}")
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, 90, "the API did not start")
    except TimeoutError:
        raise TimeoutError(f"the API did not start in 90 s:\n{process.tail()}") from None
    return process, base


def start_worker(tmp: Path, name: str, redis_url: str, wait: bool = True, **settings: str) -> Process:
    """A worker process (``xai worker``); with ``wait``, returned once it beats with its models loaded."""
    worker = Process(
        [sys.executable, "-m", "app.cli", "worker"], service_env(redis_url=redis_url, **settings), tmp / f"{name}.log"
    )
    if wait:
        with redis.Redis.from_url(redis_url) as client:

            def serving() -> bool:
                if not worker.alive():
                    raise RuntimeError(f"the worker exited:\n{worker.tail()}")
                return any(f"xai-{worker.process.pid}@" in beat for beat in worker_beats(client))

            wait_until(serving, 120, "the worker sent no heartbeat with loaded models")
    return worker


def worker_beats(client: redis.Redis) -> dict[str, dict]:
    """Heartbeats of worker processes that have loaded their models."""
    beats = {}
    for key in client.scan_iter(match="xai:worker:*"):
        raw = client.get(key)
        if raw is not None and not json.loads(raw).get("loading"):
            beats[key.decode().removeprefix("xai:worker:")] = json.loads(raw)
    return beats


@pytest.fixture(scope="session")
def service_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def redis_server(service_tmp: Path) -> Iterator[RedisServer]:
    server = RedisServer(service_tmp)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def celery_api(service_tmp: Path, redis_server: RedisServer) -> Iterator[str]:
    worker = start_worker(service_tmp, "worker", redis_server.url)
    api, base = start_api(service_tmp, "api-celery", redis_url=redis_server.url)
    yield base
    api.stop()
    worker.stop()


@pytest.fixture(scope="session")
def embedded_api(service_tmp: Path) -> Iterator[str]:
    api, base = start_api(service_tmp, "api-embedded")
    yield base
    api.stop()


@pytest.fixture(scope="session", params=["embedded", "celery"])
def api(request: pytest.FixtureRequest) -> str:
    """The base URL of a running API, in each mode."""
    return request.getfixturevalue(f"{request.param}_api")


@pytest.fixture
def client(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=60) as http:
        yield http


# API keys of the keyed services: two clients and a metrics scraper (app/auth.py).
KEY_A, KEY_B, METRICS_KEY = "xai_test_key_a_0123456789", "xai_test_key_b_0123456789", "xai_test_metrics_0123"


def keyed_settings(tmp: Path) -> dict[str, str]:
    """Keys on: key A by the setting, key B from a file (with a comment), a separate metrics key."""
    from app.auth import hash_key

    keys_file = tmp / "api-keys.txt"
    keys_file.write_text(f"# client b\n{hash_key(KEY_B)}  # added later\n")
    return {"api_keys": hash_key(KEY_A), "api_keys_file": str(keys_file), "metrics_keys": hash_key(METRICS_KEY)}


@pytest.fixture(scope="session")
def keyed_embedded_api(service_tmp: Path) -> Iterator[tuple[str, Process]]:
    api, base = start_api(service_tmp, "api-embedded-keyed", **keyed_settings(service_tmp))
    yield base, api
    api.stop()


@pytest.fixture(scope="session")
def keyed_celery_api(service_tmp: Path, redis_server: RedisServer, celery_api: str) -> Iterator[tuple[str, Process]]:
    """Keys on, in front of the Celery service's Redis and worker."""
    api, base = start_api(service_tmp, "api-celery-keyed", redis_url=redis_server.url, **keyed_settings(service_tmp))
    yield base, api
    api.stop()


@pytest.fixture(scope="session", params=["embedded", "celery"])
def keyed_api(request: pytest.FixtureRequest) -> tuple[str, Process]:
    """A running API that asks for keys, in each mode: (base URL, its process, whose log tests read)."""
    return request.getfixturevalue(f"keyed_{request.param}_api")
