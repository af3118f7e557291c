"""Every error code of the service, with its HTTP status and whether a client may retry it.

Codes are stable strings clients switch on. The API answers a request with the status of its code;
a job that failed carries its code in ``error`` and ``POST /predict`` answers with the same status.
A retryable code is a fault of the moment (a full queue, no worker yet, a worker lost): the same
request may succeed later, and a 503 carries ``Retry-After``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorCode(StrEnum):
    unauthorized = "unauthorized"
    origin_not_allowed = "origin_not_allowed"
    invalid_request = "invalid_request"
    invalid_parameter = "invalid_parameter"
    invalid_image = "invalid_image"
    target_out_of_range = "target_out_of_range"
    no_ood_head = "no_ood_head"
    unknown_model = "unknown_model"
    unknown_method = "unknown_method"
    unknown_layer = "unknown_layer"
    method_unavailable = "method_unavailable"
    job_not_found = "job_not_found"
    job_finished = "job_finished"
    map_not_found = "map_not_found"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    payload_too_large = "payload_too_large"
    unsupported_media_type = "unsupported_media_type"
    rate_limited = "rate_limited"
    too_many_jobs = "too_many_jobs"
    queue_full = "queue_full"
    unavailable = "unavailable"
    no_worker = "no_worker"
    out_of_memory = "out_of_memory"
    timeout = "timeout"
    expired = "expired"
    cancelled = "cancelled"
    worker_lost = "worker_lost"
    internal = "internal"


@dataclass(frozen=True)
class Status:
    http: int
    retryable: bool = False
    retry_after_s: int | None = None  # what a 429 or 503 tells the client to wait (unless the error knows better)


STATUS: dict[ErrorCode, Status] = {
    ErrorCode.unauthorized: Status(401),
    ErrorCode.origin_not_allowed: Status(403),
    ErrorCode.invalid_request: Status(422),
    ErrorCode.invalid_parameter: Status(422),
    ErrorCode.invalid_image: Status(422),
    ErrorCode.target_out_of_range: Status(422),
    ErrorCode.no_ood_head: Status(422),
    ErrorCode.unknown_model: Status(404),
    ErrorCode.unknown_method: Status(404),
    ErrorCode.unknown_layer: Status(422),
    ErrorCode.method_unavailable: Status(422),
    ErrorCode.job_not_found: Status(404),
    ErrorCode.job_finished: Status(409),
    ErrorCode.map_not_found: Status(404),
    ErrorCode.not_found: Status(404),
    ErrorCode.method_not_allowed: Status(405),
    ErrorCode.payload_too_large: Status(413),
    ErrorCode.unsupported_media_type: Status(415),
    ErrorCode.rate_limited: Status(429, retryable=True, retry_after_s=1),
    ErrorCode.too_many_jobs: Status(429, retryable=True, retry_after_s=5),
    ErrorCode.queue_full: Status(503, retryable=True, retry_after_s=5),
    ErrorCode.unavailable: Status(503, retryable=True, retry_after_s=5),
    ErrorCode.no_worker: Status(503, retryable=True, retry_after_s=15),
    ErrorCode.out_of_memory: Status(503, retryable=True, retry_after_s=10),
    ErrorCode.timeout: Status(504, retryable=True),
    ErrorCode.expired: Status(410),
    ErrorCode.cancelled: Status(409),
    ErrorCode.worker_lost: Status(502, retryable=True),
    ErrorCode.internal: Status(500),
}


def status_of(code: ErrorCode | str) -> Status:
    return STATUS[ErrorCode(code)]


class ServiceError(Exception):
    """A failure with a code, a message for the client, and the request field it concerns."""

    def __init__(
        self, code: ErrorCode | str, message: str, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.field = ErrorCode(code), message, field
        self.retry_after_s = retry_after_s  # when the client may try again, where it is known

    @property
    def status(self) -> Status:
        return status_of(self.code)
