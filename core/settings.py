"""Settings of the API and the workers, from environment variables prefixed ``XAI_``.

One class serves both process kinds (they must agree on the broker, the model directories and
the limits); ``get_settings()`` caches it so tests can override by clearing the cache.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models" / "zoo"
# The environment of the processes that run jobs. glibc hands large freed blocks back to the OS after every
# pass unless told otherwise (DESIGN, "Speed"), and a thread other than the main one allocates from an arena
# of its own, where those two settings do not hold: one arena for every thread (docs/architecture.md,
# "Torch threads of the jobs"). glibc reads them when a process starts.
ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_ARENA_MAX": "1"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XAI_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        None,
        description="Broker and job store, e.g. redis://redis:6379/0. Unset: jobs run in a process the API starts "
        "(embedded).",
    )
    model_dirs: Annotated[list[Path], NoDecode] = Field(
        [BUNDLED_MODELS], description="Comma-separated directories holding model folders (manifest.toml each)."
    )
    worker_models: Annotated[list[str], NoDecode] = Field(
        [], description="Comma-separated models a worker serves (its queues); empty: every model."
    )
    device: str = Field("cpu", description="Torch device of the worker: cpu, cuda, cuda:1, ...")
    result_ttl_s: int = Field(3600, ge=1, description="How long a job and its result are kept.")
    wait_cap_s: float = Field(30.0, ge=0, le=300, description="Upper bound of ?wait= on POST /explain.")
    job_time_limit_s: int = Field(600, ge=10, description="A job running longer is stopped (failed, code timeout).")
    visibility_timeout_s: int | None = Field(
        None, description="Celery: the broker redelivers an unacknowledged task after this. Default: time limit + 60 s."
    )
    max_attempts: int = Field(3, ge=1, le=20, description="Times a job is started before a lost worker fails it.")
    lease_s: float = Field(
        20.0, ge=2, le=600, description="A running job's lease; its worker renews it every quarter of this."
    )
    batch_max_images: int = Field(
        16, ge=1, le=1024, description="Images of jobs of one model run together in one batch (1: no batching)."
    )
    batch_window_ms: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="How long a worker waits for jobs to batch with the one it took; how long the API holds a "
        "model's next job message after the last one, under load (app/job_messages.py).",
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest accepted image file.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest accepted image (decompression bombs).")
    max_request_pixels: int = Field(
        64_000_000, ge=1, description="Most pixels of all the images of one request together, as uploaded."
    )
    photo_max_side: int = Field(
        2048,
        ge=64,
        description="Photos longer than this are scaled down once decoded (never below the network's input): "
        "what the workers, Redis and the overlays get.",
    )
    max_images: int = Field(16, ge=1, description="Most images in one request.")
    max_top_k: int = Field(10, ge=1, description="Largest top-k of targets and predictions.")
    embedded_workers: int = Field(1, ge=1, le=8, description="Threads running jobs in the embedded mode's job process.")
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Torch threads of the jobs. Default: the cores.",
    )
    max_queued_per_model: int = Field(
        256, ge=1, description="Most jobs of one model waiting for a worker; past it 503 queue_full with Retry-After."
    )
    embedded_queue: int = Field(64, ge=1, description="Most jobs waiting in the embedded mode before 503.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        [],
        description="Comma-separated hashes (sha256:<hex>, `xai keys new`) of the API keys. None: no key needed.",
    )
    api_keys_file: Path | None = Field(None, description="A file of more key hashes, one per line (# comments).")
    metrics_keys: Annotated[list[str], NoDecode] = Field(
        [], description="Hashes of the keys /metrics takes instead of the API keys (a scraper's)."
    )
    rate_limit: str | None = Field(
        None,
        description="Requests per window per API key (per client address without keys), as `limits` writes it: "
        "100/minute, 10/second;1000/hour. Unset: none.",
    )
    max_jobs_per_key: int | None = Field(
        None, ge=1, description="Most jobs one API key (or client address) may have queued or running. Unset: none."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [], description="Comma-separated origins whose pages may call the API (https://app.example). None: closed."
    )
    host: str = Field("127.0.0.1", description="Address `xai serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `xai serve` binds.")

    @field_validator("model_dirs", "worker_models", "api_keys", "metrics_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_keys", "metrics_keys")
    @classmethod
    def _key_hashes(cls, value: list[str]) -> list[str]:
        for item in value:
            check_key_hash(item)
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            from limits import parse_many

            try:
                parse_many(value)
            except ValueError:
                raise ValueError("write it as `limits` does: 100/minute, or several: 10/second;1000/hour") from None
        return value

    def key_hashes(self) -> list[str]:
        """The API keys' hashes: ``api_keys`` and the lines of ``api_keys_file``."""
        found = list(self.api_keys)
        if self.api_keys_file is not None:
            for number, line in enumerate(self.api_keys_file.read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    try:
                        found.append(check_key_hash(line))
                    except ValueError as error:
                        raise ValueError(f"{self.api_keys_file}:{number}: {error}") from None
        return found

    @property
    def max_request_bytes(self) -> int:
        """The most a request body may hold: every image at the limit, base64-encoded, plus 1 MiB."""
        return self.max_images * self.max_upload_bytes * 4 // 3 + (1 << 20)

    @property
    def visibility_timeout(self) -> int:
        return self.visibility_timeout_s or self.job_time_limit_s + 60

    @property
    def job_threads(self) -> int:
        """Torch's intra-op threads for running jobs."""
        if self.torch_threads is not None:
            return self.torch_threads
        return len(os.sched_getaffinity(0))

    @property
    def embedded(self) -> bool:
        return not self.redis_url


KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_key_hash(text: str) -> str:
    if not KEY_HASH.match(text):
        raise ValueError("an API key is given by its hash, sha256:<64 hex digits> (`xai keys new` makes one)")
    return text


@lru_cache
def get_settings() -> Settings:
    return Settings()
