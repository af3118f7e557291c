"""The access log without credentials: a key sent in the query string (where it does not count, 401)
would otherwise be written to uvicorn's access log with the path."""

from __future__ import annotations

import logging
import re

# Query parameters whose values are credentials, whatever the endpoint.
_SECRET = re.compile(
    r"(?i)([?&](?:api[-_]?key|key|token|access[-_]?token|auth|authorization|password|secret)=)[^&#\s]*"
)


def redact(path: str) -> str:
    return _SECRET.sub(r"\1***", path)


class RedactCredentials(logging.Filter):
    """For ``uvicorn.access``: its record's arguments are (client, method, path, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], redact(record.args[2]), *record.args[3:])
        return True


def install() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, RedactCredentials) for existing in logger.filters):
        logger.addFilter(RedactCredentials())
