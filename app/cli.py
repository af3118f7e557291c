"""``xai``: serve the API, run a worker, write the OpenAPI document.

xai serve [--host H] [--port P] [--redis-url URL] [--model-dirs DIRS]   # the API; embedded jobs without Redis
xai worker           # a Celery worker for XAI_WORKER_MODELS (prefork, one process)
xai worker-health    # exit 0 when this host's worker has loaded its models (compose healthcheck)
xai openapi [--check] [--out FILE]
xai models check DIR # load model folders as the service would and run each method once (workers/model_check.py)
xai explain PHOTO... # explain local files without a server (workers/explain_photo.py)
xai evaluate         # score every method's maps on a set of images (workers/evaluate.py)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from core.settings import ALLOCATOR, Settings, get_settings

OPENAPI = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def openapi_text() -> str:
    from app.main import create_app

    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


def worker_health(settings: Settings) -> int:
    """0 when a worker process of this host beats, has finished loading, and serves a model (those that
    failed to load are reported, and shown by the API: a restart would not mend them)."""
    from core.kv_redis import RedisKeyValue
    from core.telemetry import Telemetry
    from models.registry import ModelRegistry

    wanted = set(settings.worker_models or ModelRegistry(settings.model_dirs).names())
    host = socket.gethostname()
    try:
        beats = Telemetry(RedisKeyValue(settings.redis_url or "redis://127.0.0.1:6379/0")).workers()
    except Exception as error:
        print(f"unhealthy: the store is unreachable ({type(error).__name__})")
        return 1
    mine = {name: beat for name, beat in beats.items() if name.split(":")[0].endswith(f"@{host}")}
    for name, beat in mine.items():
        served, failed = set(beat.get("models", [])), set(beat.get("failed", {}))
        if served and not beat.get("loading") and wanted <= served | failed:  # a failed model is shown, not retried
            print(f"healthy: {name} serves {sorted(served)}" + (f"; failed to load {sorted(failed)}" if failed else ""))
            return 0
    print(f"unhealthy: no worker process of {host} serves {sorted(wanted)}: {mine or 'no heartbeat'}")
    return 1


def _keys(action: str) -> None:
    """``xai keys new``: a new key (give it to the client) and its hash (give it to the service).
    ``xai keys hash``: the hash of the key on stdin (not an argument: it would stay in the shell's history)."""
    from app.auth import hash_key, new_key

    if action == "new":
        key = new_key()
        print(f"key:  {key}\nhash: {hash_key(key)}\n\nSet XAI_API_KEYS to the hash (several: comma-separated),")
        print("or add it as a line of the file XAI_API_KEYS_FILE names. The key is shown only here.")
    else:
        key = sys.stdin.readline().strip()
        if not key:
            sys.exit("no key on stdin")
        print(hash_key(key))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="xai", description="xai-service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the HTTP API",
        description="Run the HTTP API. Each option overrides its setting (XAI_HOST, XAI_PORT, XAI_REDIS_URL, "
        "XAI_MODEL_DIRS); every other setting comes from the environment (docs/deployment.md).",
    )
    serve.add_argument("--host", help="address to bind (XAI_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (XAI_PORT; default 8000)")
    serve.add_argument("--redis-url", help="run jobs through Celery workers on this Redis (XAI_REDIS_URL)")
    serve.add_argument("--model-dirs", help="comma-separated model directories (XAI_MODEL_DIRS)")
    commands.add_parser("worker", help="run a Celery worker (python -m workers.worker --help)", add_help=False)
    commands.add_parser("worker-health", help="exit 0 when this host's worker serves its models")
    keys = commands.add_parser("keys", help="API keys")
    keys.add_argument("action", choices=["new", "hash"], help="new: make a key; hash: hash a key read from stdin")
    commands.add_parser("explain", help="explain local image files, no server (xai explain --help)", add_help=False)
    commands.add_parser("evaluate", help="score methods' maps on images (xai evaluate --help)", add_help=False)
    models = commands.add_parser("models", help="model folders (xai models check --help)", add_help=False)
    models.add_argument("action", choices=["check"], nargs="?")
    spec = commands.add_parser("openapi", help="write openapi/openapi.json (or --out FILE)")
    spec.add_argument("--check", action="store_true", help="fail when the committed file differs")
    spec.add_argument("--out", type=Path, default=OPENAPI, help="where to write it (default: %(default)s)")
    args, rest = parser.parse_known_args(argv)
    if args.command in ("explain", "evaluate"):
        module = {"explain": "workers.explain_photo", "evaluate": "workers.evaluate"}[args.command]
        os.execvpe(sys.executable, [sys.executable, "-m", module, *rest], dict(os.environ))
    if args.command == "models":
        # Loads networks: the worker's code, run as its own program as the worker is.
        os.execvpe(sys.executable, [sys.executable, "-m", "workers.model_check", *rest], dict(os.environ))
    if rest and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "keys":
        _keys(args.action)
        return
    if args.command == "serve":
        given = {"XAI_HOST": args.host, "XAI_PORT": args.port, "XAI_REDIS_URL": args.redis_url}
        given["XAI_MODEL_DIRS"] = args.model_dirs
        os.environ.update({key: str(value) for key, value in given.items() if value is not None})
        get_settings.cache_clear()
    settings = get_settings()

    if args.command == "openapi":
        text = openapi_text()
        if args.check:
            if not OPENAPI.is_file() or OPENAPI.read_text() != text:
                sys.exit(f"{OPENAPI} is out of date: run `xai openapi`")
            return
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    elif args.command == "serve":
        import uvicorn

        mode = "embedded jobs" if settings.embedded else f"jobs through {settings.redis_url}"
        print(f"xai-service on http://{settings.host}:{settings.port} ({mode}); docs at /docs", flush=True)
        uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port, log_level="info")
    elif args.command == "worker-health":
        sys.exit(worker_health(settings))
    else:
        # The worker is another program (workers/worker.py): started, not imported by the API package.
        os.execvpe(sys.executable, [sys.executable, "-m", "workers.worker", *rest], {**os.environ, **ALLOCATOR})


if __name__ == "__main__":
    main()
