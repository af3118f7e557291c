"""API keys: who is calling, and whether they may.

With keys configured (``XAI_API_KEYS`` and/or ``XAI_API_KEYS_FILE``: their SHA-256 hashes, never the
keys themselves), every endpoint but ``/healthz`` and ``/readyz`` needs a key, as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; anything else (no key, a wrong one, a key in
the query string, where it would land in access logs) is a 401 with ``WWW-Authenticate``. A key is
known by the first 16 hex digits of its hash: that is the owner of the jobs it creates, and a job is
visible and cancellable only with the key that created it (404 to any other). ``/metrics`` takes the
keys of ``XAI_METRICS_KEYS`` when set (a scraper's), else the API keys. Without keys configured (the
embedded quick start), nothing is asked.

Why a fast hash: keys are 256-bit random tokens (``xai keys new``), not passwords a person chose; a
slow hash (bcrypt, argon2) protects guessable secrets and would cost milliseconds per request here.
Hashes are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from core.errors import ErrorCode, ServiceError

OWNER_DIGITS = 16  # of the key's hash: the owner of its jobs


def new_key() -> str:
    return "xai_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class Keys:
    """The accepted keys, by hash."""

    def __init__(self, hashes: list[str]) -> None:
        self._digests = sorted({item.removeprefix("sha256:") for item in hashes})

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def owner(self, key: str | None) -> str | None:
        """The owner id of an accepted key; None for anything else."""
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        matched = False
        for known in self._digests:  # every one compared: the time does not tell which matched
            matched |= hmac.compare_digest(known, digest)
        return digest[:OWNER_DIGITS] if matched else None


_bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="X-API-Key: <API key>")


def _check(keys: Keys, credentials: HTTPAuthorizationCredentials | None, header: str | None) -> str | None:
    if not keys.required:
        return None
    owner = keys.owner(credentials.credentials if credentials is not None else header)
    if owner is None:
        given = "no API key" if credentials is None and header is None else "an API key that is not accepted"
        raise ServiceError(
            ErrorCode.unauthorized,
            f"{given}: send one as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            "Authorization",
        )
    return owner


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
HeaderDep = Annotated[str | None, Security(_header)]


async def caller(request: Request, credentials: BearerDep, header: HeaderDep) -> str | None:
    """The owner id of the request's API key (None when the service asks for no keys), once the request
    is counted against its rate limit (``app/quotas.py``)."""
    owner = _check(request.app.state.keys, credentials, header)
    rate = request.app.state.rate_limit
    if rate.limiter is not None:
        await run_in_threadpool(rate.hit, quota_holder(request, owner))
    return owner


def quota_holder(request: Request, owner: str | None) -> str:
    """Whom quotas count: the API key, or without keys the client's address."""
    if owner is not None:
        return f"key:{owner}"
    return f"address:{request.client.host if request.client else 'unknown'}"


@dataclass(frozen=True)
class Client:
    owner: str | None  # the API key's owner id; None without keys
    quota: tuple[str, int] | None  # (whom quotas count, most jobs in flight), when there is a cap


async def client(request: Request, owner: str | None = Depends(caller)) -> Client:
    most = request.app.state.settings.max_jobs_per_key
    return Client(owner, None if most is None else (quota_holder(request, owner), most))


async def metrics_caller(request: Request, credentials: BearerDep, header: HeaderDep) -> str | None:
    return _check(request.app.state.metrics_keys, credentials, header)


CallerDep = Annotated[str | None, Depends(caller)]
ClientDep = Annotated[Client, Depends(client)]
