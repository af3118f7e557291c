"""Schemathesis hooks of the fuzz tests (loaded through ``SCHEMATHESIS_HOOKS``)."""

from __future__ import annotations

import json

import schemathesis

# 503 with Retry-After: the bounded queue doing its job under the fuzzer's burst; 504 timeout: a synchronous
# prediction queued behind the fuzzer's costly jobs (documented on POST /predict).
BACKPRESSURE = {503: {"queue_full"}, 504: {"timeout"}}


@schemathesis.check
def no_server_error_but_backpressure(ctx, response, case) -> None:
    """Every 5xx is a failure but a 503 ``queue_full`` with ``Retry-After`` and a 504 ``timeout`` of POST
    /predict: the fuzzer's valid requests (the document's examples are real ones) queue real jobs faster than
    the workers end them."""
    if response.status_code < 500:
        return
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if code in BACKPRESSURE.get(response.status_code, ()) and (
        response.status_code == 504 or "retry-after" in {k.lower() for k in response.headers}
    ):
        return
    raise AssertionError(f"server error {response.status_code} ({code}): {response.content[:300]!r}")
