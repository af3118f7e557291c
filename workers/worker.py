"""``xai worker``: a Celery worker for the models of ``XAI_WORKER_MODELS`` (all, when empty).

It refuses an unsafe Celery configuration (``unsafe_settings``) before it starts, and unregisters every
task but ours (``our_tasks_only``). It names itself
``xai-<pid>@<host>`` so that its processes can add their models' queues to it once loaded.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from workers.celery_app import celery, our_tasks_only, unsafe_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xai worker", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo"], help="solo: development only")
    parser.add_argument("--concurrency", type=int, default=1, help="processes; one per GPU")
    args = parser.parse_args(argv)
    problems = unsafe_settings(celery)
    if problems:
        sys.exit("refusing to start the worker:\n- " + "\n- ".join(problems))
    our_tasks_only(celery)
    node = f"xai-{os.getpid()}@{socket.gethostname()}"
    os.environ["XAI_NODE_NAME"] = node
    os.environ["XAI_POOL"] = args.pool
    celery.worker_main(
        [
            "worker",
            f"--pool={args.pool}",
            f"--concurrency={args.concurrency}",
            "--loglevel=INFO",
            "--hostname",
            node,
            "--queues",
            "xai.default",  # model queues are added as their models load
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
