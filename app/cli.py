"""``xai``: serve the API, run a worker, write the OpenAPI document.

xai serve            # the API on XAI_HOST:XAI_PORT; embedded jobs unless XAI_REDIS_URL is set
xai worker           # a Celery worker for XAI_WORKER_MODELS (prefork, one process)
xai openapi [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from app.settings import get_settings

OPENAPI = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"
# glibc hands large freed blocks back to the OS after every pass unless told otherwise (DESIGN, "Speed").
ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def openapi_text() -> str:
    from app.main import create_app

    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


def _with_allocator(argv: list[str]) -> None:
    """Re-exec with the allocator settings: glibc reads them only when the process starts."""
    if any(os.environ.get(key) != value for key, value in ALLOCATOR.items()):
        os.execvpe(sys.executable, [sys.executable, "-m", "app.cli", *argv], {**os.environ, **ALLOCATOR})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="xai", description="xai-service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API")
    worker = commands.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo"], help="solo: development only")
    worker.add_argument("--concurrency", type=int, default=1, help="processes; one per GPU")
    spec = commands.add_parser("openapi", help="write openapi/openapi.json")
    spec.add_argument("--check", action="store_true", help="fail when the committed file differs")
    args = parser.parse_args(argv)
    settings = get_settings()

    if args.command == "openapi":
        text = openapi_text()
        if args.check:
            if not OPENAPI.is_file() or OPENAPI.read_text() != text:
                sys.exit(f"{OPENAPI} is out of date: run `xai openapi`")
            return
        OPENAPI.parent.mkdir(exist_ok=True)
        OPENAPI.write_text(text)
        print(f"wrote {OPENAPI}")
    elif args.command == "serve":
        if settings.embedded:
            _with_allocator(argv)
        import uvicorn

        mode = "embedded jobs" if settings.embedded else f"jobs through {settings.redis_url}"
        print(f"xai-service on http://{settings.host}:{settings.port} ({mode}); docs at /docs", flush=True)
        uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port, log_level="info")
    else:
        _with_allocator(argv)
        from models.registry import ModelRegistry
        from workers.celery_app import celery, queue_of

        models = settings.worker_models or ModelRegistry(settings.model_dirs).names()
        celery.worker_main(
            [
                "worker",
                f"--pool={args.pool}",
                f"--concurrency={args.concurrency}",
                "--loglevel=INFO",
                "-Q",
                ",".join(queue_of(model) for model in models),
            ]
        )


if __name__ == "__main__":
    main()
