"""What workers publish about themselves and their work, beside the job records.

- heartbeats: each worker process, every few seconds, with the models it loaded and those it
  could not load (and why); the API reads them for ``/readyz``, ``GET /models`` and to refuse
  jobs for a model no live worker serves;
- what each loaded model can do: its methods, the layers of its layer methods (``Capabilities``);
- job durations by method and failures by code, exported by the API's ``/metrics``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from core.capabilities import Capabilities
from core.kv import Effect, KeyValue

_METRICS = "xai:metrics"
_WORKER = "xai:worker:"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))
HEARTBEAT_S = 5.0  # how often a worker beats; a beat lives three times as long


class Telemetry:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    # -- job metrics --
    def record_durations(self, durations: Iterable[tuple[str, float]]) -> None:
        """Add (method, seconds) samples to the histograms, in one round trip."""
        sums: Counter[str] = Counter()
        buckets: Counter[str] = Counter()
        for method, seconds in durations:
            sums[method] += seconds
            buckets.update(f"{method}|{bound}" for bound in DURATION_BUCKETS if seconds <= bound)
        effects: list[Effect] = [("add", f"{_METRICS}:duration_sum", method, total) for method, total in sums.items()]
        effects += [("add", f"{_METRICS}:duration_bucket", field, count) for field, count in buckets.items()]
        if effects:
            self.kv.apply(effects)

    def record_failure(self, code: str) -> None:
        self.kv.add(f"{_METRICS}:failures", code, 1)

    def durations(self) -> tuple[dict[str, float], dict[str, float]]:
        """(sum of seconds by method, cumulative count by 'method|bound')."""
        return self.kv.fields(f"{_METRICS}:duration_sum"), self.kv.fields(f"{_METRICS}:duration_bucket")

    def failures(self) -> dict[str, float]:
        return self.kv.fields(f"{_METRICS}:failures")

    # -- workers --
    def heartbeat(self, worker: str, loaded: list[str], failed: dict[str, str], loading: bool = False) -> None:
        beat = {"models": loaded, "failed": failed, "loading": loading, "at": time.time()}
        self.kv.put(f"{_WORKER}{worker}", json.dumps(beat).encode(), 3 * HEARTBEAT_S)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Workers whose heartbeat has not expired: the models each serves and those it failed to load."""
        return {key.removeprefix(_WORKER): json.loads(value) for key, value in self.kv.scan(_WORKER).items()}

    def put_capabilities(self, model: str, capabilities: Capabilities) -> None:
        self.kv.put(f"xai:capabilities:{model}", capabilities.model_dump_json().encode(), 7 * 24 * 3600)

    def capabilities(self, model: str) -> Capabilities | None:
        raw = self.kv.get(f"xai:capabilities:{model}")
        return None if raw is None else Capabilities.model_validate_json(raw)


def serving(workers: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Model -> the live workers that loaded it."""
    found: dict[str, list[str]] = {}
    for worker, beat in sorted(workers.items()):
        for model in beat.get("models", []):
            found.setdefault(model, []).append(worker)
    return found


def load_errors(workers: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Model -> {worker: why it could not load the model}."""
    found: dict[str, dict[str, str]] = {}
    for worker, beat in sorted(workers.items()):
        for model, error in beat.get("failed", {}).items():
            found.setdefault(model, {})[worker] = error
    return found
