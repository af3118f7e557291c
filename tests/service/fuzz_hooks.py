"""Schemathesis hooks of the fuzz tests (loaded through ``SCHEMATHESIS_HOOKS``)."""

from __future__ import annotations

import json

import schemathesis

BACKPRESSURE = {"queue_full"}  # 503 with Retry-After: the bounded queue doing its job under the fuzzer's burst


@schemathesis.check
def no_server_error_but_backpressure(ctx, response, case) -> None:
    """Every 5xx is a failure but a 503 ``queue_full`` with ``Retry-After``: the fuzzer's valid requests (the
    document's examples are real ones) queue real jobs faster than the workers end them."""
    if response.status_code < 500:
        return
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if response.status_code == 503 and code in BACKPRESSURE and "retry-after" in {k.lower() for k in response.headers}:
        return
    raise AssertionError(f"server error {response.status_code} ({code}): {response.content[:300]!r}")
