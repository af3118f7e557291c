"""Quotas per API key (per client address without keys): requests per window, and jobs in flight.

The request rate is the ``limits`` library's moving window (``XAI_RATE_LIMIT``, e.g. ``100/minute``),
its counters in the job store's Redis in the Celery mode (every API process shares them) and in memory
in the embedded mode. Past it: 429 ``rate_limited`` with ``Retry-After`` the time until the window
lets the next request in. Why ``limits``: it is maintained, has the strategies and the Redis storage,
and is what slowapi and Flask-Limiter stand on; slowapi itself decorates routes and answers with its
own error shape, where we need ours, and one check in the dependency that identifies the caller.

The jobs in flight (``XAI_MAX_JOBS_PER_KEY``): each job is put in its owner's set when it is created
and taken out in the same step as its end (``core/jobs.py``); a job that would take the set past the
cap is refused with 429 ``too_many_jobs`` before anything of it is stored.
"""

from __future__ import annotations

import time

from core.errors import ErrorCode, ServiceError
from core.settings import Settings


class RateLimit:
    def __init__(self, settings: Settings) -> None:
        from limits import parse_many
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self.items = parse_many(settings.rate_limit) if settings.rate_limit else []
        storage = storage_from_string(settings.redis_url or "memory://") if self.items else None
        self.limiter = MovingWindowRateLimiter(storage) if storage is not None else None

    def hit(self, who: str) -> None:
        """Count a request of ``who``; ServiceError ``rate_limited`` past any of the limits."""
        if self.limiter is None:
            return
        for item in self.items:
            if not self.limiter.hit(item, "xai", who):
                reset = self.limiter.get_window_stats(item, "xai", who).reset_time
                wait = max(1.0, reset - time.time())
                raise ServiceError(
                    ErrorCode.rate_limited,
                    f"more than {item} requests; try again in {wait:.0f} s",
                    "Authorization",
                    retry_after_s=wait,
                )
