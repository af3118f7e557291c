"""No request a client can send produces a 500, and every answer is what the document says (its status,
its content type, its schema): schemathesis fuzzes every operation of the spec."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.cli import OPENAPI
from tests.service.conftest import KEY_A


def test_no_generated_request_gets_a_server_error(api):
    fuzz(api)


def test_no_generated_request_with_a_key_gets_a_server_error(keyed_api):
    """With keys on, authenticated: the requests get past the key check and reach every handler."""
    fuzz(keyed_api[0], "--header", f"Authorization: Bearer {KEY_A}")


def fuzz(api: str, *options: str) -> None:
    runner = Path(sys.executable).with_name("st")
    done = subprocess.run(
        [
            str(runner),
            "run",
            str(OPENAPI),
            "--url",
            api,
            *options,
            "--checks",
            # not_a_server_error, but for the bounded queue's 503 (tests/service/fuzz_hooks.py)
            "no_server_error_but_backpressure,response_schema_conformance,status_code_conformance,"
            "content_type_conformance",
            "--request-timeout",
            "40",  # ?wait= is capped at 30 s
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--exclude-path",
            "/metrics",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.service.fuzz_hooks"},
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout
