"""What the service path costs over the bare kernel: GradCAM alone, then through the API in both modes.

    python -m bench.service [--modes embedded,celery] [--models efficientnet-lite0,lenet5-shapes]
                            [--requests 30] [--seconds 20] [--clients 16] [--quick]

In one run:

1. The kernel: GradCAM at batch 1 on the network the worker holds (``ModelRegistry().network``, the
   manifest's ``gradcam_layer``, channels_last input, the explainer built per call through
   ``workers/methods.py`` as the job runner does), on the same decoded image the service gets. Its
   median ms and its standalone batch-1 rate (explanations/s). It runs in a child process with the
   tuned glibc allocator (``app.cli.ALLOCATOR``), the setting ``xai serve`` and ``xai worker`` give
   the service processes; the setting of every side is printed.
2. One client: ``POST /explain?wait=30`` with a JSON body (one base64 image, ``gradcam``, a heatmap
   PNG), N sequential requests after a few warm-up ones; p50 and p95 latency, and the overhead over
   the kernel (p50 minus the kernel's median), with the job's own timings for where the time went.
3. Throughput: 16 concurrent asyncio clients (httpx) for a bounded time doing the same request;
   jobs/s against the kernel's batch-1 rate, and every answer that was not a 200 with a succeeded job;
   the worker's batches as the answers tell them (a batch's jobs share its timings): how many jobs each
   ran, and what its GradCAM and its scores cost per job.

Per mode: embedded (``xai serve`` without ``XAI_REDIS_URL``: jobs in the API process) and Celery
(a redis-server on a free port, one ``xai worker``, the API with ``XAI_REDIS_URL``). The modes run
one after another, each with only its own processes up; every process started is stopped at the end.
The kernel is measured before the first mode and after each mode's service stopped (with the OoD
score's cost the first time only); each mode's rows are compared with the better of the two measured
beside it, minutes apart (the machine's speed drifts by a third within an hour, and a whole run's best
kernel, also printed, can come from another phase of it). Torch's threads are its default on every
side (the header says how many); set ``OMP_NUM_THREADS`` in the environment to change them on all sides
at once (the service processes inherit it). On a loaded machine a 2-thread kernel can run many times
slower than a 1-thread one. Images: scikit-image's photo of a cat (``chelsea``) resized to 224x224 as a JPEG for
efficientnet-lite0; a 32x32 PNG of ``models.shapes`` for lenet5-shapes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

from app.cli import ALLOCATOR
from bench.timing import allocator_setting
from tests.service.conftest import ROOT, Process, RedisServer, child_pids, start_api, start_worker, wait_until
from tests.service.helpers import b64, encode, shape_photos

if TYPE_CHECKING:
    import torch

    from workers.methods import Context

MODELS = ("efficientnet-lite0", "lenet5-shapes")
MODES = ("embedded", "celery")
PATH = "/explain?wait=30"
PROCESS_COLUMNS = ("API + jobs", "API", "worker", "redis")
# Targets of the work: single-client p50 overhead (efficientnet-lite0), and jobs/s under 16 clients
# over the kernel's batch-1 rate, per model.
OVERHEAD_TARGET_MS = {"efficientnet-lite0": 15.0}
RATE_TARGET = {"efficientnet-lite0": 1.2, "lenet5-shapes": 0.3}
OOD_TARGET = 0.05  # the OoD score's extra cost over a prediction


# --- the images and the request ------------------------------------------------------------------


def image_file(model: str) -> tuple[bytes, str]:
    """The encoded image sent for ``model``, and what it is."""
    if model == "efficientnet-lite0":
        from skimage import data

        cat = Image.fromarray(data.chelsea()).resize((224, 224), Image.Resampling.BILINEAR)
        return encode(cat, "JPEG", quality=90), "cat, 224x224 JPEG"
    if model == "lenet5-shapes":
        return encode(shape_photos(1)[0]), "shape, 32x32 PNG"
    raise ValueError(f"no benchmark image for model {model!r}; choose from {', '.join(MODELS)}")


def request_body(model: str) -> bytes:
    """The JSON body of every request of a model, serialised once (the clients share 2 cores with the service)."""
    data, _ = image_file(model)
    body = {"model": model, "methods": [{"name": "gradcam"}], "outputs": ["heatmap"], "images": [b64(data)]}
    return json.dumps(body).encode()


HEADERS = {"content-type": "application/json"}


# --- the kernel (in a child process with the tuned allocator) --------------------------------------


def kernel(models: list[str], seconds: float, ood: bool = True) -> dict[str, Any]:
    """GradCAM at batch 1 per model, as the worker runs it; repeated for ``seconds`` (at least 10 runs). With
    ``ood``, the OoD score's cost too."""
    import torch

    from bench.timing import machine
    from core.images import decode_image
    from models.registry import ModelRegistry
    from workers.methods import Context
    from workers.model_host import ModelHost
    from workers.network_inputs import network_inputs

    registry = ModelRegistry()
    host = ModelHost(registry, "cpu")
    found: dict[str, Any] = {}
    for name in models:
        manifest = registry.manifest(name)
        network = host.network(name)
        data, what = image_file(name)
        photo = decode_image(data, max_bytes=len(data), max_pixels=10**9)
        x = network_inputs([photo], manifest.preprocessing)  # channels_last, as the worker gives it
        with torch.inference_mode():
            targets = network(x).argmax(dim=1, keepdim=True)  # (1, 1): the top class, as the job explains it
        samples = timed_runs(gradcam_run(Context(network, manifest.gradcam_layer), x, targets), seconds)
        found[name] = {
            "image": what,
            "layer": manifest.gradcam_layer,
            "median_ms": statistics.median(samples) * 1000,
            "rate": len(samples) / sum(samples),
            "runs": len(samples),
            "ood": ood_cost(host, name, x, seconds) if ood else {},
        }
    return {"allocator": allocator_setting(), "machine": machine(), "models": found}


def ood_cost(host: Any, name: str, x: torch.Tensor, seconds: float) -> dict[str, dict[str, float]]:
    """Per batch size, the median ms without and with the model's OoD score, run interleaved, of two
    things: the network's prediction (``workers/inference.py``'s ``_predict``: the forward pass and the
    probabilities), and the worker's whole prediction job (what ``POST /predict`` runs: ``compute`` and
    ``result_of`` of a job without methods — preprocessing, the pass, the top classes, the result). Empty
    for a model without an OoD head."""
    import torch

    from core.contract import JobSpec, RenderOptions
    from core.images import decode_image
    from workers.inference import _predict, compute, result_of
    from workers.methods import probabilities
    from workers.model_host import ModelHost

    ood = host.ood_net(name)
    if ood is None:
        return {}

    class WithoutHeads(ModelHost):
        def ood_net(self, name: str) -> None:
            return None

    headless = WithoutHeads(host.registry, host.device, [name])
    network = host.network(name)
    to_probabilities = probabilities(host.manifest(name).probabilities)
    data, _ = image_file(name)
    photo = decode_image(data, max_bytes=len(data), max_pixels=10**9)

    def job(on: Any, batch: int) -> Callable[[], object]:
        spec = JobSpec(
            job_id="bench",
            model=name,
            methods=[],
            outputs=["raw"],
            render=RenderOptions(),
            image_count=batch,
            image_sizes=[photo.size] * batch,
        )
        return lambda: result_of(
            spec, compute([spec], [[photo] * batch], on, lambda f: None, {})[0], on, lambda *a: None
        )

    found = {}
    for batch in (1, 16):
        inputs = x.repeat(batch, 1, 1, 1).contiguous(memory_format=torch.channels_last)
        plain, scored = interleaved(
            lambda inputs=inputs: _predict(network, None, inputs, to_probabilities),
            lambda inputs=inputs: _predict(network, ood, inputs, to_probabilities),
            seconds,
        )
        plain_job, scored_job = interleaved(job(headless, batch), job(host, batch), seconds)
        found[str(batch)] = {
            "plain_ms": statistics.median(plain) * 1000,
            "ood_ms": statistics.median(scored) * 1000,
            "job_plain_ms": statistics.median(plain_job) * 1000,
            "job_ood_ms": statistics.median(scored_job) * 1000,
        }
    return found


def interleaved(
    first: Callable[[], object], second: Callable[[], object], seconds: float
) -> tuple[list[float], list[float]]:
    """Seconds per run of each, alternating, for ``seconds`` in all (at least 20 runs each)."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(3):
        first(), second()
    deadline = time.perf_counter() + seconds
    while len(a) < 20 or time.perf_counter() < deadline:
        for run, samples in ((first, a), (second, b)):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
    return a, b


def gradcam_run(context: Context, x: torch.Tensor, targets: torch.Tensor) -> Callable[[], object]:
    """One job's explanation: the explainer built from the call and run, as ``workers/inference.py`` does."""
    from core.methods import call
    from workers.methods import build_explainer, explain

    gradcam = call("gradcam")
    return lambda: explain(gradcam, build_explainer(gradcam, context), x, targets, lambda fraction: None)[0].float()


def timed_runs(run: Callable[[], object], seconds: float, warmup: int = 3, least: int = 10) -> list[float]:
    """Seconds per run: back to back for ``seconds`` (and at least ``least`` runs), after ``warmup``."""
    for _ in range(warmup):
        run()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < least or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return samples


def kernel_in_child(models: list[str], seconds: float, ood: bool = True) -> dict[str, Any]:
    """``kernel`` in a fresh process started with the allocator setting the service processes get."""
    command = [sys.executable, "-m", "bench.service", "--kernel-only", "--models", ",".join(models)]
    command += ["--kernel-seconds", str(seconds), *([] if ood else ["--no-ood"])]
    done = subprocess.run(
        command, env={**os.environ, **ALLOCATOR}, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the kernel measurement failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the service -------------------------------------------------------------------------------


def process_allocator(pid: int) -> str:
    """The allocator setting a running process of ours started with (its environment, from /proc)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError as error:
        return f"unknown ({type(error).__name__})"
    env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
    return allocator_setting(env)


@dataclass
class Service:
    mode: str
    base: str
    allocators: dict[str, str]  # process -> its allocator setting
    pids: dict[str, int] = field(default_factory=dict)  # process -> pid, for its CPU time


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of its children that are still running (a worker's
    prefork child), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return total
    return total + sum(cpu_seconds(child) for child in child_pids(pid))


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


@contextmanager
def running(mode: str, tmp: Path) -> Iterator[Service]:
    """The API in ``mode`` (and for Celery its redis-server and one worker), all stopped on the way out."""
    started: list[Process] = []
    server: RedisServer | None = None
    try:
        if mode == "embedded":
            api, base = start_api(tmp, "api-embedded")
            started.append(api)
            allocator = {"job process": process_allocator(child_pids(api.process.pid)[0])}
            yield Service(mode, base, allocator, {"API + jobs": api.process.pid})
        elif mode == "celery":
            server = RedisServer(tmp)
            server.start()
            worker = start_worker(tmp, "worker", server.url)
            started.append(worker)
            api, base = start_api(tmp, "api-celery", redis_url=server.url)
            started.append(api)
            yield Service(
                mode,
                base,
                {
                    "worker": process_allocator(worker.process.pid),
                    "API (no torch)": process_allocator(api.process.pid),
                },
                {"API": api.process.pid, "worker": worker.process.pid, "redis": server.process.pid},  # type: ignore[union-attr]
            )
        else:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    finally:
        for process in reversed(started):
            process.stop()
        if server is not None:
            server.stop()
        stop_leftovers()


def stop_leftovers() -> None:
    """SIGKILL a child process still running: one interrupted (Ctrl-C, SIGTERM) while ``start_api`` or
    ``start_worker`` waited for it to come up, before it was handed back to be stopped. Our service
    processes lead their own session: their whole group goes (a worker's prefork child too)."""
    me = os.getpid()
    try:
        children = [int(pid) for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split()]
    except OSError:
        return
    for pid in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getsid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def warm_up(http: httpx.Client, body: bytes, count: int, timeout: float = 120) -> None:
    """``count`` successful requests; 503s (models still loading, queues not consumed yet) are retried."""

    def succeeded() -> bool:
        response = http.post(PATH, content=body, headers=HEADERS)
        if response.status_code == 503:
            return False
        check(response)
        return True

    for _ in range(count):
        wait_until(succeeded, timeout, "the service did not answer a warm-up request with 200", interval=0.5)


def check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise RuntimeError(f"POST {PATH}: {response.status_code} {response.text[:500]}")
    view = response.json()
    if view["state"] != "succeeded":
        raise RuntimeError(f"POST {PATH}: job {view['state']}: {view.get('error')}")
    return view


@dataclass
class Single:
    latencies_ms: list[float]
    job_ms: dict[str, list[float]] = field(default_factory=dict)  # predict, gradcam, queued, run


def single_client(base: str, body: bytes, warmup: int, requests: int) -> Single:
    with httpx.Client(base_url=base, timeout=60) as http:
        warm_up(http, body, warmup)
        found = Single([])
        for _ in range(requests):
            start = time.perf_counter()
            response = http.post(PATH, content=body, headers=HEADERS)
            found.latencies_ms.append((time.perf_counter() - start) * 1000)
            view = check(response)
            parts = {key: view["timings_ms"].get(key) for key in ("predict", "gradcam")}
            if view.get("started_at") is not None and view.get("finished_at") is not None:
                parts["queued"] = (view["started_at"] - view["created_at"]) * 1000
                parts["run"] = (view["finished_at"] - view["started_at"]) * 1000
            for key, value in parts.items():
                if value is not None:
                    found.job_ms.setdefault(key, []).append(value)
        return found


@dataclass
class Load:
    jobs: int
    seconds: float
    latencies_ms: list[float]
    other: Counter  # answers that were not a 200 with a succeeded job
    client_cpu_ms: float = 0.0  # the load generator's own CPU per answer
    process_cpu_ms: dict[str, float] = field(default_factory=dict)  # per service process, CPU per answer
    batches: Counter = field(default_factory=Counter)  # a batch's shared ``timings_ms`` -> its jobs answered

    def batch_sizes(self) -> Counter:
        """How many batches ran with each number of jobs (the jobs of a batch share one ``timings_ms``)."""
        return Counter(self.batches.values())

    def per_job_ms(self, size: int, timing: str) -> float | None:
        """The median over the batches of ``size`` jobs of their ``timing`` divided by ``size``."""
        found = [dict(key).get(timing) for key, jobs in self.batches.items() if jobs == size]
        values = [value / size for value in found if value is not None]
        return statistics.median(values) if values else None


class Connection:
    """One keep-alive HTTP/1.1 connection sending the same prepared request again and again.

    The load generator shares the machine's cores with the service; httpx's AsyncClient spent ~1.6 ms
    of CPU per request here, a fifth of what the whole service spends on a lenet5-shapes job. This
    client writes prepared bytes and reads ``Content-Length`` bodies (what uvicorn sends for JSON):
    ~0.2 ms per request, so that the cores go to the service being measured."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        headers = {name.lower(): value for name, value in fields.items()}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.writer.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def prepared_request(base: str, body: bytes) -> tuple[str, int, bytes]:
    url = httpx.URL(base)
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nContent-Type: {HEADERS['content-type']}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return url.host, int(url.port or 80), head.encode() + body


async def _load(base: str, body: bytes, clients: int, seconds: float) -> Load:
    found = Load(0, 0.0, [], Counter())
    host, port, request = prepared_request(base, body)
    connections = [Connection(host, port, request) for _ in range(clients)]
    cpu_before = time.process_time()
    started = time.monotonic()
    deadline = started + seconds

    async def client(connection: Connection) -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                status, answer = await asyncio.wait_for(connection.post(), 60)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
                found.other[f"transport {type(error).__name__}"] += 1
                connection.close()
                connection.writer = None
                continue
            if status != 200:
                found.other[f"http {status}"] += 1
            elif (state := (answered := json.loads(answer))["state"]) != "succeeded":
                found.other[f"200 {state}"] += 1
            else:
                found.jobs += 1
                found.batches[tuple(sorted(answered.get("timings_ms", {}).items()))] += 1
                found.latencies_ms.append((time.perf_counter() - start) * 1000)

    try:
        await asyncio.gather(*(client(connection) for connection in connections))
    finally:
        for connection in connections:
            connection.close()
    found.seconds = time.monotonic() - started  # until the last request started before the deadline answered
    answers = found.jobs + sum(found.other.values())
    found.client_cpu_ms = (time.process_time() - cpu_before) * 1000 / max(1, answers)
    return found


def load(base: str, body: bytes, clients: int, seconds: float, pids: dict[str, int] | None = None) -> Load:
    """``clients`` concurrent clients for ``seconds``; with ``pids``, the CPU each process spent per answer."""
    before = cpu_of(pids or {})
    found = asyncio.run(_load(base, body, clients, seconds))
    answers = max(1, found.jobs + sum(found.other.values()))
    after = cpu_of(pids or {})
    found.process_cpu_ms = {name: (after[name] - before[name]) * 1000 / answers for name in before}
    return found


# --- the report --------------------------------------------------------------------------------


def percentile(samples: list[float], q: int) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def median_of(values: list[float] | None) -> str:
    return "—" if not values else f"{statistics.median(values):.1f}"


def verdict(met: bool) -> str:
    return "yes" if met else "**no**"


def loadavg() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def note(message: str) -> None:
    """Progress, on stderr: stdout holds the report."""
    print(f"[{time.strftime('%H:%M:%S')}] load {loadavg()}: {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    mode: str
    model: str
    single: Single
    load: Load
    clients: int
    beside: list[dict[str, Any]] = field(default_factory=list)  # the kernel just before and after its mode ran

    def kernel(self) -> dict[str, float]:
        """The kernel this row is compared with: the better of the two measured beside its mode, minutes apart
        rather than the whole run (the machine's speed drifts by a third within an hour)."""
        return {
            "median_ms": min(run["median_ms"] for run in self.beside),
            "rate": max(run["rate"] for run in self.beside),
        }


def reference(measured: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per model, the kernel the service is compared with: the better of its measurements (the least
    disturbed by the machine's other work; the comparison is then the harder one for the service)."""
    return {
        name: {
            "median_ms": min(run["models"][name]["median_ms"] for run in measured),
            "rate": max(run["models"][name]["rate"] for run in measured),
        }
        for name in measured[0]["models"]
    }


def report(measured: list[dict[str, Any]], allocators: dict[str, dict[str, str]], rows: list[Row], args: Any) -> None:
    kernels = reference(measured)
    when = ["before", *(f"after {mode}" for mode in args.modes)][: len(measured)]
    print("\n### Kernel: GradCAM, batch 1, channels_last, in a process of its own\n")
    print(
        f"Measured before the services run and after each mode's ({args.kernel_seconds:g} s each); `ref` is the "
        "best of them, the run's best kernel.\n"
    )
    print(
        "| model | image | layer | "
        + " | ".join(f"median ms {w} | rate /s {w} | runs {w}" for w in when)
        + " | ref ms | ref batch-1 /s |"
    )
    print("| --- | --- | --- | " + " | ".join("---: | ---: | ---:" for _ in when) + " | ---: | ---: |")
    for name, ref in kernels.items():
        ks = [run["models"][name] for run in measured]
        first = ks[0]
        cells = " | ".join(f"{k['median_ms']:.1f} | {k['rate']:.1f} | {k['runs']}" for k in ks)
        print(
            f"| {name} | {first['image']} | {first['layer']} | {cells} | {ref['median_ms']:.1f} | {ref['rate']:.1f} |"
        )

    print("\n### The kernel beside each mode\n")
    print(
        "Measured just before a mode's service started and just after it stopped (the measurement between two "
        "modes serves both; a kernel run while a service is up, even idle, slowed that service's next jobs by "
        "up to a half); each row below is compared with the better of its mode's two (`ref`), the run's best "
        "kernel above being minutes away on a machine whose speed drifts.\n"
    )
    print("| mode | model | median ms before | rate /s before | median ms after | rate /s after | ref ms | ref /s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        cells = " | ".join(f"{run['median_ms']:.1f} | {run['rate']:.1f}" for run in row.beside)
        ref = row.kernel()
        print(f"| {row.mode} | {row.model} | {cells} | {ref['median_ms']:.1f} | {ref['rate']:.1f} |")

    print(f"\n### One client: `POST {PATH}`, {args.requests} sequential requests after {args.warmup} warm-up\n")
    print(
        "Overhead: the p50 latency minus the kernel's median (the row's `ref`). The job's own timings (medians): "
        "`predict` "
        "(the forward pass for the top-5, with the OoD score where the model has a head), `gradcam` "
        "(the explainer), `queued` (created to started), `run` (started to finished: also rendering the PNG).\n"
    )
    print(
        "| mode | model | p50 ms | p95 ms | kernel ms | overhead p50 ms | target | met "
        "| job predict ms | job gradcam ms | job queued ms | job run ms |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        p50 = statistics.median(row.single.latencies_ms)
        p95 = percentile(row.single.latencies_ms, 95)
        kernel_ms = row.kernel()["median_ms"]
        overhead = p50 - kernel_ms
        target = OVERHEAD_TARGET_MS.get(row.model)
        goal = "—" if target is None else f"<= {target:.0f}"
        met = "—" if target is None else verdict(overhead <= target)
        jobs = row.single.job_ms
        print(
            f"| {row.mode} | {row.model} | {p50:.1f} | {p95:.1f} | {kernel_ms:.1f} | {overhead:.1f} | {goal} | {met} "
            f"| {median_of(jobs.get('predict'))} | {median_of(jobs.get('gradcam'))} "
            f"| {median_of(jobs.get('queued'))} | {median_of(jobs.get('run'))} |"
        )

    clients = rows[0].clients if rows else args.clients
    print(f"\n### Throughput: {clients} concurrent clients, {args.seconds:g} s each, the same request\n")
    print(
        "| mode | model | jobs | s | jobs/s | kernel batch-1 /s | ratio | target | met "
        "| ratio to the run's best kernel | p50 ms | p95 ms | client CPU ms/request | not 200 + succeeded |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        rate = row.load.jobs / row.load.seconds
        kernel_rate = row.kernel()["rate"]
        ratio = rate / kernel_rate
        target = RATE_TARGET.get(row.model)
        goal = "—" if target is None else f">= {target:g}x"
        met = "—" if target is None else verdict(ratio >= target)
        latencies = row.load.latencies_ms
        p50 = f"{statistics.median(latencies):.0f}" if latencies else "—"
        p95 = f"{percentile(latencies, 95):.0f}" if latencies else "—"
        other = sum(row.load.other.values())
        others = f"{other}" + (f" ({dict(row.load.other)})" if other else "")
        print(
            f"| {row.mode} | {row.model} | {row.load.jobs} | {row.load.seconds:.1f} | {rate:.1f} | {kernel_rate:.1f} "
            f"| {ratio:.3f} | {goal} | {met} | {rate / kernels[row.model]['rate']:.3f} | {p50} | {p95} "
            f"| {row.load.client_cpu_ms:.2f} | {others} |"
        )

    print(f"\n### The worker's batches under {clients} clients\n")
    print(
        "From the answers: the jobs of one batch share its timings. For the batches of the largest size seen, "
        "the `gradcam` (the explainer's pass, which also gives the prediction) and `quality` (the scores) each "
        "took, divided by its jobs (one image each).\n"
    )
    print(
        "| mode | model | batches | jobs per batch (mean) | largest | batches of it "
        "| gradcam ms / job | quality ms / job |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        sizes = row.load.batch_sizes()
        if not sizes:
            continue
        largest = max(sizes)
        mean = sum(size * count for size, count in sizes.items()) / sum(sizes.values())
        cells = [row.load.per_job_ms(largest, timing) for timing in ("gradcam", "quality")]
        shown = " | ".join("—" if cell is None else f"{cell:.2f}" for cell in cells)
        counts = f"{sum(sizes.values())} | {mean:.1f} | {largest} | {sizes[largest]}"
        print(f"| {row.mode} | {row.model} | {counts} | {shown} |")

    with_head = {name: found["ood"] for name, found in measured[0]["models"].items() if found.get("ood")}
    if with_head:
        print("\n### The OoD score's extra cost over a prediction (before the service runs, interleaved)\n")
        print(
            "The network's prediction (the forward pass and the probabilities), and the worker's prediction "
            "job (what `POST /predict` runs: preprocessing, the pass, the top classes, the result).\n"
        )
        print("| model | what | batch | without ms | with the OoD score ms | extra | target | met |")
        print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
        for name, batches in with_head.items():
            for what, prefix in (("the network's prediction", ""), ("the prediction job", "job_")):
                for batch, cost in batches.items():
                    plain, scored = cost[f"{prefix}plain_ms"], cost[f"{prefix}ood_ms"]
                    extra = scored / plain - 1
                    print(
                        f"| {name} | {what} | {batch} | {plain:.3f} | {scored:.3f} | {extra:+.1%} "
                        f"| <= {OOD_TARGET:.0%} | {verdict(extra <= OOD_TARGET)} |"
                    )

    print(f"\n### Where the cores went under {clients} clients: CPU ms per answered request\n")
    print(
        "The service's processes (a worker with its prefork child) and the load generator, from /proc; "
        "the sum against the machine's cores gives the most requests/s this work could reach here.\n"
    )
    cores = len(os.sched_getaffinity(0))
    print(
        f"| mode | model | {' | '.join(PROCESS_COLUMNS)} | load client | sum | {cores} cores / sum, /s | measured /s |"
    )
    print("| --- | --- |" + " ---: |" * (len(PROCESS_COLUMNS) + 4))
    for row in rows:
        spent = row.load.process_cpu_ms
        columns = [f"{spent[name]:.2f}" if name in spent else "—" for name in PROCESS_COLUMNS]
        total = sum(spent.values()) + row.load.client_cpu_ms
        rate = row.load.jobs / row.load.seconds
        print(
            f"| {row.mode} | {row.model} | {' | '.join(columns)} | {row.load.client_cpu_ms:.2f} | {total:.2f} "
            f"| {cores * 1000 / total:.0f} | {rate:.1f} |"
        )

    print("\nAllocator per process: kernel:", measured[0]["allocator"], end="")
    for mode, found in allocators.items():
        for process, setting in found.items():
            print(f"; {mode} {process}: {setting}", end="")
    print()


# --- the command -------------------------------------------------------------------------------


def listed(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated), got {text!r}")
        return items

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=listed(MODES), default=list(MODES), help="embedded,celery (default: both)")
    parser.add_argument("--models", type=listed(MODELS), default=list(MODELS), help="default: both bundled models")
    parser.add_argument("--requests", type=int, default=None, help="sequential requests of one client (30)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up requests before them (3)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each throughput run (20)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the throughput runs")
    parser.add_argument("--kernel-seconds", type=float, default=None, help="time per kernel measurement (5)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 requests, 5 s of load, 1 s of kernel")
    parser.add_argument("--logs", type=Path, help="keep the service processes' logs here (default: a temp dir)")
    parser.add_argument("--kernel-only", action="store_true", help="measure the kernel in this process; print JSON")
    parser.add_argument("--no-ood", action="store_true", help="with --kernel-only: leave out the OoD score's cost")
    args = parser.parse_args(argv)
    defaults = {"requests": (30, 8), "warmup": (3, 2), "seconds": (20.0, 5.0), "kernel_seconds": (5.0, 1.0)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.requests < 2 or args.clients < 1 or args.seconds <= 0:
        parser.error("--requests must be at least 2, --clients at least 1, --seconds positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.kernel_only:
        print(json.dumps(kernel(args.models, args.kernel_seconds, ood=not args.no_ood)))
        return

    # SIGTERM (``timeout``, a CI runner) unwinds like Ctrl-C: the finally blocks stop the processes started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    note("kernel (child process, tuned allocator), before the service runs")
    measured = [kernel_in_child(args.models, args.kernel_seconds)]
    print(
        f"# service overhead — {measured[0]['machine']}; kernel: {measured[0]['allocator']}; "
        f"modes {','.join(args.modes)}; load average (1/5/15 min) at start {loadavg()}"
    )
    bodies = {model: request_body(model) for model in args.models}
    rows: list[Row] = []
    allocators: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="xai-bench-") as temporary:
        tmp = args.logs or Path(temporary)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            for mode in args.modes:
                note(f"{mode}: starting the service")
                with running(mode, tmp) as service:
                    allocators[mode] = service.allocators
                    ran = []
                    for model in args.models:
                        note(f"{mode} {model}: one client, {args.requests} requests")
                        single = single_client(service.base, bodies[model], args.warmup, args.requests)
                        note(f"{mode} {model}: {args.clients} clients, {args.seconds:g} s")
                        loaded = load(service.base, bodies[model], args.clients, args.seconds, service.pids)
                        ran.append(Row(mode, model, single, loaded, args.clients))
                note(f"kernel again, after the {mode} service stopped")
                measured.append(kernel_in_child(args.models, args.kernel_seconds, ood=False))
                for row in ran:
                    row.beside = [run["models"][row.model] for run in measured[-2:]]
                rows.extend(ran)
        finally:
            if rows:  # what was measured, even when a later mode failed
                report(measured, allocators, rows, args)
                print(f"\nLoad average (1/5/15 min) at the end: {loadavg()}")


if __name__ == "__main__":
    main()
