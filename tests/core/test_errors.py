"""Every error code has an HTTP status; retryable ones are the faults of a moment."""

from __future__ import annotations

import pytest

from core.errors import STATUS, ErrorCode, ServiceError, status_of


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_has_a_status(code: ErrorCode) -> None:
    status = STATUS[code]
    assert 400 <= status.http < 600
    if status.http == 503:
        assert status.retryable and status.retry_after_s, "a 503 tells the client when to come back"


def test_the_worker_codes_that_answered_500_have_their_own_status() -> None:
    assert status_of("out_of_memory").http == 503
    assert status_of("expired").http == 410
    assert status_of("timeout").http == 504
    assert status_of("no_worker").http == 503 and status_of("no_worker").retryable


def test_an_unknown_code_is_refused() -> None:
    with pytest.raises(ValueError):
        ServiceError("teapot", "short and stout")
