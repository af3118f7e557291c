"""Job records: the state machine of a job, its attempts and its lease, in the key-value store.

A record (``xai:job:<id>``) beside the spec and the decoded pixels answers "no such job" (404) for
an unknown or expired id, where Celery's result store would answer PENDING. Every change is one
atomic transaction on the record, so the rules below hold whatever runs concurrently:

- ``queued -> running`` only through :meth:`JobRecords.claim`, which takes a *lease*: the worker
  that holds it, until when, and the attempt number. A job whose lease is alive is never claimed
  again; one whose lease expired (its worker died) may be, until ``max_attempts`` is spent.
- A worker writes progress and the final state only while the record still names its attempt
  (a fencing token): a worker that lost its lease can compute, but none of its writes land.
- :meth:`JobRecords.reclaim` moves a running job whose lease expired back to ``queued`` (the
  caller sends its message again), or ends it: ``failed`` with ``worker_lost`` after the last
  attempt, or ``timeout`` past its time limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core.contract import TERMINAL_STATES, ErrorInfo, JobResult, JobSpec, JobView
from core.errors import ErrorCode, ServiceError
from core.kv import Admission, Document, Effect, KeyValue, Transaction

_PREFIX = "xai:job:"
LEASES = "xai:leases"  # sorted set: job id -> lease expiry
ENDED = "xai:ended"  # channel: the id of every job that reached its end
_QUEUED = "xai:queued:"  # list per model: ids of jobs sent, for a worker to gather a batch
_IN_FLIGHT = "xai:inflight:"  # sorted set per quota holder: its jobs not ended yet, by creation time
_WAITING = "xai:waiting:"  # sorted set per model: its jobs not claimed by a worker yet, by creation time
ENDED_RECORD_MAX = 64 * 1024  # an ended record up to this size rides along in its ENDED message


class Claim(StrEnum):
    run = "run"  # the caller now holds the lease: run the job
    finished = "finished"  # already succeeded, failed or cancelled: nothing to do
    held = "held"  # another worker holds a live lease: do not run it
    exhausted = "exhausted"  # its attempts are spent: now failed with worker_lost
    cancelled = "cancelled"  # cancelled while queued: now cancelled
    missing = "missing"  # unknown or expired


class Lease:
    """What a running attempt holds: the fencing token of its writes."""

    def __init__(self, job_id: str, owner: str, attempt: int) -> None:
        self.job_id, self.owner, self.attempt = job_id, owner, attempt

    def holds(self, record: Document | None) -> bool:
        return (
            record is not None
            and record.get("state") == "running"
            and record.get("lease_owner") == self.owner
            and record.get("attempts") == self.attempt
        )


@dataclass
class End:
    """How an attempt ends (:meth:`JobRecords.finish`)."""

    lease: Lease
    state: str
    result: JobResult | None = None
    error: ErrorInfo | None = None
    timings_ms: dict[str, float] | None = None
    maps: dict[str, bytes] | None = None


@dataclass
class MapSource:
    job_id: str
    attempt: int
    spec: JobSpec
    values: bytes  # core/render.py's map_bytes
    pixels: bytes | None  # the photo's, when the job keeps them (it asked for overlays)
    png: bytes | None  # drawn before, the same way


class JobRecords:
    def __init__(self, kv: KeyValue, ttl_s: int) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    # -- the API's side --
    def create(
        self,
        spec: JobSpec,
        pixels: list[bytes],
        owner: str | None = None,
        quota: tuple[str, int] | None = None,
        queue_cap: int | None = None,
    ) -> JobView:
        """Store the spec, the decoded pixels, and a queued record, in one step. ``owner``: the API key
        that created it, the only one that sees it (None: no keys). ``quota``: (who, most jobs in flight):
        ServiceError ``too_many_jobs`` when ``who`` has that many jobs not ended. ``queue_cap``: most jobs
        of the model waiting for a worker: ServiceError ``queue_full`` past it. Refused, nothing is kept."""
        admissions: list[Admission] = []
        refusals: list[ServiceError] = []
        if quota is not None:
            who, most = quota
            admissions.append(Admission(f"{_IN_FLIGHT}{who}", spec.job_id, most, self.ttl_s))
            refusals.append(
                ServiceError(
                    ErrorCode.too_many_jobs, f"{most} jobs of this client are queued or running", "Authorization"
                )
            )
        if queue_cap is not None:
            admissions.append(Admission(f"{_WAITING}{spec.model}", spec.job_id, queue_cap, self.ttl_s))
            refusals.append(
                ServiceError(ErrorCode.queue_full, f"{queue_cap} jobs of model {spec.model!r} wait already", "model")
            )
        record = {
            "job_id": spec.job_id,
            "state": "queued",
            "progress": 0.0,
            "model": spec.model,
            "methods": [call.name for call in spec.methods],
            "created_at": time.time(),
            "attempts": 0,
            "image_count": spec.image_count,
            "keeps_pixels": "overlay" in spec.outputs,  # the API draws overlays on the photo after the end
            "owner": owner,
            "quota": None if quota is None else quota[0],
        }
        effects: list[Effect] = [
            ("put", f"{_PREFIX}{spec.job_id}:pixels:{index}", data, self.ttl_s) for index, data in enumerate(pixels)
        ]
        effects += [
            ("put", f"{_PREFIX}{spec.job_id}:spec", spec.model_dump_json().encode(), self.ttl_s),
            ("put", self._key(spec.job_id), json.dumps(record).encode(), self.ttl_s),
            ("push", f"{_QUEUED}{spec.model}", spec.job_id, self.ttl_s),
        ]
        refused = self.kv.apply_if_admitted(admissions, effects)
        if refused is not None:
            raise refusals[refused]
        return _view(record)

    def view(self, job_id: str, caller: str | None = None) -> JobView | None:
        """The job as a client sees it; None when there is no such job, or it is another key's."""
        raw = self.kv.get(self._key(job_id))
        if raw is None:
            return None
        record = json.loads(raw)
        return _view(record) if _visible(record, caller) else None

    def fail(self, job_id: str, code: ErrorCode, message: str) -> None:
        """End a job that never reached a worker (its message could not be sent, the queue is full)."""
        self._end(job_id, None, "failed", error=ErrorInfo(code=code, message=message))

    def cancel(self, job_id: str) -> JobView | None:
        """Cancel a queued job now; ask a running one to stop at its next batch. None: no such job."""

        def change(record: Document | None, now: float) -> tuple[Document | None, str | None]:
            if record is None:
                return None, None
            if record["state"] in TERMINAL_STATES:
                return None, "finished"
            if record["state"] == "queued":
                return _ended(record, "cancelled"), "cancelled"
            return {**record, "cancel_requested": True}, "requested"

        def effects(outcome: str | None, record: Document | None) -> list[Effect]:
            return _released(job_id, record) if outcome == "cancelled" else []

        if self.kv.transact(self._key(job_id), change, self.ttl_s, effects) is None:
            return None
        return self.view(job_id)

    # -- the worker's side --
    def spec(self, job_id: str) -> JobSpec | None:
        raw = self.kv.get(f"{_PREFIX}{job_id}:spec")
        return None if raw is None else JobSpec.model_validate_json(raw)

    def specs(self, job_ids: list[str]) -> list[JobSpec | None]:
        """:meth:`spec` of each job, in one round trip."""
        raws = self.kv.get_many([f"{_PREFIX}{job_id}:spec" for job_id in job_ids])
        return [None if raw is None else JobSpec.model_validate_json(raw) for raw in raws]

    def pixels(self, jobs: list[tuple[str, int]]) -> list[list[bytes | None]]:
        """For each (job id, image count), the decoded pixels of its images (None where they expired),
        in one round trip."""
        keys = [f"{_PREFIX}{job_id}:pixels:{index}" for job_id, count in jobs for index in range(count)]
        found, start, per_job = self.kv.get_many(keys), 0, []
        for _, count in jobs:
            per_job.append(found[start : start + count])
            start += count
        return per_job

    def queued(self, model: str, count: int) -> list[str]:
        """Up to ``count`` ids of jobs sent for ``model``, oldest first, taken off the list: candidates a
        worker may claim to run beside its own. Only a hint: each job's message still reaches a worker,
        which runs it unless it was claimed in a batch meanwhile."""
        return self.kv.pop(f"{_QUEUED}{model}", count)

    def claim(
        self, job_id: str, owner: str, lease_s: float, max_attempts: int, time_limit_s: float = float("inf")
    ) -> tuple[Claim, Lease | None]:
        """Take the job's lease for a new attempt, if nobody holds it, attempts remain and the last
        attempt did not run into the time limit."""
        return self.claim_many([job_id], owner, lease_s, max_attempts, time_limit_s)[0]

    def claim_many(
        self, job_ids: list[str], owner: str, lease_s: float, max_attempts: int, time_limit_s: float = float("inf")
    ) -> list[tuple[Claim, Lease | None]]:
        """:meth:`claim` for each job, in one pass over the store."""
        claims = [self._claim(job_id, owner, lease_s, max_attempts, time_limit_s) for job_id in job_ids]
        outcomes = self.kv.transact_many([transaction for transaction, _ in claims])
        return [
            (outcome, Lease(job_id, owner, taken["attempts"]) if outcome is Claim.run else None)
            for job_id, outcome, (_, taken) in zip(job_ids, outcomes, claims, strict=True)
        ]

    def _claim(
        self, job_id: str, owner: str, lease_s: float, max_attempts: int, time_limit_s: float
    ) -> tuple[Transaction[Claim], dict[str, Any]]:
        """The claim's transaction, and what it writes once it ran."""
        taken: dict[str, Any] = {}

        def change(record: Document | None, now: float) -> tuple[Document | None, Claim]:
            if record is None:
                return None, Claim.missing
            if record["state"] in TERMINAL_STATES:
                return None, Claim.finished
            if record["state"] == "running" and record.get("lease_until", 0) > now:
                return None, Claim.held
            if record.get("cancel_requested"):
                return _ended(record, "cancelled"), Claim.cancelled
            if _timed_out(record, time_limit_s):
                return _ended(record, "failed", error=_timeout_error(time_limit_s)), Claim.exhausted
            attempts = int(record.get("attempts", 0))
            if attempts >= max_attempts:
                return _lost(record, attempts), Claim.exhausted
            taken.update(
                state="running",
                attempts=attempts + 1,
                lease_owner=owner,
                lease_until=now + lease_s,
                lease_s=lease_s,
                claimed_at=now,
                renewed_at=now,
                started_at=time.time(),
                progress=0.0,
            )
            return {**record, **taken}, Claim.run

        def effects(outcome: Claim, record: Document | None) -> list[Effect]:
            if outcome is Claim.run:  # ``taken`` holds what this try of the transaction writes
                waiting: list[Effect] = (
                    [] if record is None else [("index", f"{_WAITING}{record['model']}", job_id, None)]
                )
                return [("index", LEASES, job_id, taken["lease_until"]), *waiting]
            return _released(job_id, record) if outcome in (Claim.exhausted, Claim.cancelled) else []

        return Transaction(self._key(job_id), change, self.ttl_s, effects), taken

    def renew(self, lease: Lease, lease_s: float) -> tuple[bool, bool]:
        """Extend the lease. (still held, cancellation requested)."""
        renewed: dict[str, float] = {}

        def fields(now: float) -> dict[str, float]:
            renewed.update(lease_until=now + lease_s, renewed_at=now)
            return renewed

        return self._while_held(lease, fields, lambda: [("index", LEASES, lease.job_id, renewed["lease_until"])])

    def progress(self, lease: Lease, fraction: float) -> tuple[bool, bool]:
        """Record progress. (still held, cancellation requested)."""
        return self._while_held(lease, lambda now: {"progress": round(fraction, 4)})

    def _while_held(
        self,
        lease: Lease,
        fields: Callable[[float], dict[str, Any]],
        effects: Callable[[], list[Effect]] = list,
    ) -> tuple[bool, bool]:
        """Change ``fields(now)`` of the record, and write ``effects()``, if ``lease`` still holds it.
        (held, cancellation requested)."""

        def change(record: Document | None, now: float) -> tuple[Document | None, tuple[bool, bool]]:
            if record is None or not lease.holds(record):
                return None, (False, False)
            return {**record, **fields(now)}, (True, bool(record.get("cancel_requested")))

        def held_effects(outcome: tuple[bool, bool], record: Document | None) -> list[Effect]:
            return effects() if outcome[0] else []

        return self.kv.transact(self._key(lease.job_id), change, self.ttl_s, held_effects)

    def finish(
        self,
        lease: Lease,
        state: str,
        *,
        result: JobResult | None = None,
        error: ErrorInfo | None = None,
        timings_ms: dict[str, float] | None = None,
        maps: dict[str, bytes] | None = None,
    ) -> bool:
        """Write the attempt's end, with its maps' values (by name) in the same step; False when the lease
        was lost (nothing was written)."""
        return self.finish_many([End(lease, state, result, error, timings_ms, maps)])[0]

    def finish_many(self, ends: list[End]) -> list[bool]:
        """:meth:`finish` for each job, in one pass over the store."""
        transactions = []
        for end in ends:
            stored: list[Effect] = [
                ("put", self._map_key(end.lease.job_id, end.lease.attempt, name), data, self.ttl_s)
                for name, data in (end.maps or {}).items()
            ]
            fields = {"result": end.result, "error": end.error, "timings_ms": end.timings_ms}
            transactions.append(self._end_transaction(end.lease.job_id, end.lease, end.state, stored, **fields))
        return self.kv.transact_many(transactions)

    def reclaim(self, job_id: str, max_attempts: int, time_limit_s: float) -> str | None:
        """A running job whose lease expired: back to queued (returns "queued": send its message
        again), or ended ("failed"). None when its lease is alive or it is no longer running."""

        def change(record: Document | None, now: float) -> tuple[Document | None, str | None]:
            if record is None or record["state"] != "running" or record.get("lease_until", 0) > now:
                return None, None
            attempts = int(record.get("attempts", 0))
            if record.get("cancel_requested"):
                return _ended(record, "cancelled"), "cancelled"
            if _timed_out(record, time_limit_s):
                return _ended(record, "failed", error=_timeout_error(time_limit_s)), "failed"
            if attempts >= max_attempts:
                return _lost(record, attempts), "failed"
            queued = {k: v for k, v in record.items() if k not in ("lease_owner", "lease_until")}
            return {**queued, "state": "queued", "progress": 0.0}, "queued"

        def effects(outcome: str | None, record: Document | None) -> list[Effect]:
            if outcome in ("failed", "cancelled"):
                return _released(job_id, record)
            if outcome == "queued" and record is not None:  # it may join a batch again
                return [("index", LEASES, job_id, None), ("push", f"{_QUEUED}{record['model']}", job_id, self.ttl_s)]
            return [("index", LEASES, job_id, None)] if record is None else []

        return self.kv.transact(self._key(job_id), change, self.ttl_s, effects)

    def expired_leases(self) -> list[str]:
        return self.kv.below(LEASES, self.kv.now())

    # -- maps --
    def map_source(self, job_id: str, caller: str | None, image: int, name: str, png: str) -> MapSource | None:
        """What the map ``name`` of a succeeded job is drawn from: the job's spec, the map's values, the
        photo's pixels when they are kept, and the PNG ``png`` when it was drawn before. None: no such
        job, not succeeded, or no such map."""
        record = self._record(job_id)
        if record is None or record["state"] != "succeeded" or not _visible(record, caller):
            return None
        attempt = int(record["attempts"])
        spec, values, pixels, drawn = self.kv.get_many(
            [
                f"{_PREFIX}{job_id}:spec",
                self._map_key(job_id, attempt, name),
                f"{_PREFIX}{job_id}:pixels:{image}",
                self._png_key(job_id, attempt, name, png),
            ]
        )
        if spec is None or values is None:
            return None
        return MapSource(job_id, attempt, JobSpec.model_validate_json(spec), values, pixels, drawn)

    def keep_png(self, source: MapSource, name: str, png_name: str, png: bytes) -> None:
        """Keep a drawn PNG for the next request of the same map, drawn the same way."""
        self.kv.put(self._png_key(source.job_id, source.attempt, name, png_name), png, self.ttl_s)

    # -- internals --
    @staticmethod
    def _key(job_id: str) -> str:
        return f"{_PREFIX}{job_id}"

    @staticmethod
    def _map_key(job_id: str, attempt: int, name: str) -> str:
        return f"{_PREFIX}{job_id}:map:{attempt}:{name}"

    @classmethod
    def _png_key(cls, job_id: str, attempt: int, name: str, drawn_as: str) -> str:
        """A PNG drawn from the map ``name``, kept beside it."""
        return cls._map_key(job_id, attempt, f"{name}.png:{drawn_as}")

    def _record(self, job_id: str) -> Document | None:
        raw = self.kv.get(self._key(job_id))
        return None if raw is None else json.loads(raw)

    def _end(self, job_id: str, lease: Lease | None, state: str, **fields: Any) -> bool:
        return self.kv.transact_many([self._end_transaction(job_id, lease, state, [], **fields)])[0]

    def _end_transaction(
        self, job_id: str, lease: Lease | None, state: str, extra: list[Effect], **fields: Any
    ) -> Transaction[bool]:
        ended: Document = {}

        def change(record: Document | None, now: float) -> tuple[Document | None, bool]:
            if record is None or record["state"] in TERMINAL_STATES:
                return None, False
            if lease is not None and not lease.holds(record):
                return None, False
            ended.clear()
            ended.update(_ended(record, state, **fields))
            return ended, True

        def effects(written: bool, record: Document | None) -> list[Effect]:
            return [*extra, *_released(job_id, record, ended)] if written else []

        return Transaction(self._key(job_id), change, self.ttl_s, effects)


def _released(job_id: str, record: Document | None, ended: Document | None = None) -> list[Effect]:
    """A job at its end: waiters are told (with the ended record when it is small), no lease to watch,
    its pixels are no longer needed (unless it succeeded and overlays are drawn on them)."""
    succeeded = ended is not None and ended.get("state") == "succeeded"
    keep = record is not None and bool(record.get("keeps_pixels")) and succeeded
    image_count = 0 if record is None or keep else int(record.get("image_count", 0))
    pixels = [f"{_PREFIX}{job_id}:pixels:{index}" for index in range(image_count)]
    quota = None if record is None else record.get("quota")
    slot: list[Effect] = [] if quota is None else [("index", f"{_IN_FLIGHT}{quota}", job_id, None)]
    if record is not None:
        slot.append(("index", f"{_WAITING}{record['model']}", job_id, None))
    message = job_id
    if ended is not None and len(text := json.dumps(ended)) <= ENDED_RECORD_MAX:
        message = f"{job_id} {text}"
    return [("index", LEASES, job_id, None), ("delete", *pixels), *slot, ("publish", ENDED, message)]


def parse_ended(message: str) -> tuple[str, bytes | None]:
    """An ENDED message: the job's id, and its ended record when it came along."""
    job_id, _, record = message.partition(" ")
    return job_id, record.encode() if record else None


def view_of(raw: bytes) -> JobView:
    """The view of a stored record."""
    return _view(json.loads(raw))


def _ended(record: dict[str, Any], state: str, **fields: Any) -> dict[str, Any]:
    ended = {k: v for k, v in record.items() if k not in ("lease_until", "cancel_requested", "lease_s")}
    ended.update({k: _jsonable(v) for k, v in fields.items() if v is not None})
    ended.update(state=state, finished_at=time.time())
    if state == "succeeded":
        ended["progress"] = 1.0
    return ended


def _visible(record: Document, caller: str | None) -> bool:
    """With API keys (a caller), a job is visible only to the key that created it."""
    return caller is None or record.get("owner") == caller


def _timed_out(record: dict[str, Any], time_limit_s: float) -> bool:
    """The last attempt was alive (renewing its lease) until its time limit: the limit killed it, and it
    would only be killed again. A worker that died early is not this, however late it is noticed."""
    if record.get("state") != "running" or "claimed_at" not in record:
        return False
    alive = float(record["renewed_at"]) - float(record["claimed_at"])
    return alive >= time_limit_s - float(record.get("lease_s", 0))


def _timeout_error(time_limit_s: float) -> dict[str, str]:
    return {"code": ErrorCode.timeout.value, "message": f"the job ran past its time limit of {time_limit_s:g} s"}


def _lost(record: dict[str, Any], attempts: int) -> dict[str, Any]:
    message = f"the worker running the job was lost {attempts} times; it is not tried again"
    return _ended(record, "failed", error={"code": ErrorCode.worker_lost.value, "message": message})


def _jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _view(record: dict[str, Any]) -> JobView:
    fields = {k: v for k, v in record.items() if k in JobView.model_fields}
    return JobView.model_validate(fields)
