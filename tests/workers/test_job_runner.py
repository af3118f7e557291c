"""The job runner on a real model and an in-memory store: batches across jobs, each job on its own."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest

from core.contract import ExplainOptions
from core.jobs import JobRecords
from core.kv_memory import MemoryKeyValue
from core.settings import Settings
from core.telemetry import Telemetry
from core.validation import build_spec
from models.registry import ModelRegistry
from tests.service.helpers import encode, shape_photos
from workers import job_runner
from workers.job_runner import JobRunner
from workers.model_host import ModelHost

PHOTOS = [encode(photo) for photo in shape_photos(8)]


@pytest.fixture(scope="module")
def host() -> ModelHost:
    made = ModelHost(ModelRegistry(), "cpu", ["lenet5-shapes"])
    made.load_all()
    return made


class Bench:
    """A store, a runner and a way to send jobs, as a worker sees them."""

    def __init__(self, host: ModelHost, **settings: object) -> None:
        self.settings = Settings(**{"batch_window_ms": 0, **settings})
        self.records = JobRecords(MemoryKeyValue(), 600)
        self.runner = JobRunner(self.records, Telemetry(self.records.kv), host, self.settings, "test")
        self.registry = host.registry

    def send(self, images: int = 1, **options: object) -> str:
        request = {"model": "lenet5-shapes", "methods": [{"name": "gradcam"}], "outputs": ["raw"], **options}
        spec, pixels = build_spec(
            ExplainOptions.model_validate(request), PHOTOS[:images], self.registry, lambda m: None, self.settings
        )
        self.records.create(spec, pixels)
        return spec.job_id


def raw(view, image: int = 0, position: int = 0) -> np.ndarray:
    found = view.result.images[image].maps[position].raw
    return np.frombuffer(base64.b64decode(found.data), dtype="<f2").reshape(found.shape).astype(np.float32)


def test_jobs_with_the_same_methods_run_as_one_batch_and_match_running_alone(host):
    bench = Bench(host)
    first, second, third = bench.send(2), bench.send(3), bench.send(1)
    other = bench.send(1, methods=[{"name": "gradient"}])
    assert bench.runner.run(first) == "succeeded"
    views = {job: bench.records.view(job) for job in (first, second, third, other)}
    assert [views[job].state for job in (first, second, third)] == ["succeeded"] * 3
    assert views[other].state == "queued", "other methods: not in the batch"
    assert bench.runner.run(second) == "finished", "its own message comes later and is dropped"
    assert bench.runner.run(other) == "succeeded"

    alone = Bench(host, batch_max_images=1)
    again = alone.send(3)
    assert alone.runner.run(again) == "succeeded"
    # Same images, a batch of 6 against a batch of 3: the maps agree to float16's rounding of the result
    # (the kernels' batch invariance is 1e-5 relative, tests/xai/test_contract.py).
    for image in range(3):
        batched, single = raw(views[second], image), raw(alone.records.view(again), image)
        assert np.allclose(batched, single, rtol=2e-3, atol=2e-3 * float(np.abs(single).max()))


def test_a_batch_mates_own_message_is_answered_without_the_store(host, monkeypatch):
    """A job this runner ended in a batch is known to be finished: its message costs no round trip.
    A job ended elsewhere is still looked up."""
    bench = Bench(host)
    first, second = bench.send(1), bench.send(1)
    assert bench.runner.run(first) == "succeeded"
    assert bench.records.view(second).state == "succeeded", "second ran in first's batch"

    def unreachable(*args, **kwargs):
        raise AssertionError("the store was read for a job this runner ended")

    with monkeypatch.context() as patched:
        patched.setattr(bench.records.kv, "transact_many", unreachable)
        patched.setattr(bench.records.kv, "get", unreachable)
        assert bench.runner.run(second) == "finished"
        assert bench.runner.run(first) == "finished"
    other = JobRunner(bench.records, Telemetry(bench.records.kv), host, bench.settings, "another")
    assert other.run(second) == "finished", "another process asks the store"


def test_the_batch_budget_bounds_the_images_of_a_batch(host):
    bench = Bench(host, batch_max_images=4)
    jobs = [bench.send(2) for _ in range(3)]
    bench.runner.run(jobs[0])
    assert [bench.records.view(job).state for job in jobs] == ["succeeded", "succeeded", "queued"]


def test_a_job_cancelled_mid_batch_ends_and_its_mates_go_on(host):
    bench = Bench(host)
    rise = {"methods": [{"name": "rise", "params": {"num_masks": 8000}}]}
    jobs = [bench.send(2, **rise) for _ in range(3)]

    def cancel_the_second() -> None:
        while bench.records.view(jobs[1]).progress == 0:
            time.sleep(0.01)
        bench.records.cancel(jobs[1])

    threading.Thread(target=cancel_the_second, daemon=True).start()
    assert bench.runner.run(jobs[0]) == "succeeded"
    states = [bench.records.view(job).state for job in jobs]
    assert states == ["succeeded", "cancelled", "succeeded"]
    assert bench.records.view(jobs[1]).result is None


def test_a_job_whose_images_expired_fails_alone(host):
    bench = Bench(host)
    jobs = [bench.send(1) for _ in range(3)]
    bench.records.kv.delete(f"xai:job:{jobs[1]}:pixels:0")
    bench.runner.run(jobs[0])
    views = [bench.records.view(job) for job in jobs]
    assert [view.state for view in views] == ["succeeded", "failed", "succeeded"]
    assert views[1].error.code == "expired"


def test_a_failed_batch_runs_again_job_by_job(host, monkeypatch):
    """A batch that raises (a fault of the batch, not of one job) is not the end of its jobs."""
    calls = []

    def fails_in_batches(specs, *args, **kwargs):
        calls.append(len(specs))
        if len(specs) > 1:
            raise RuntimeError("a fault of the batch")
        return compute(specs, *args, **kwargs)

    compute = job_runner.compute
    monkeypatch.setattr(job_runner, "compute", fails_in_batches)
    bench = Bench(host)
    jobs = [bench.send(1) for _ in range(3)]
    bench.runner.run(jobs[0])
    assert calls == [3, 1, 1, 1]
    assert [bench.records.view(job).state for job in jobs] == ["succeeded"] * 3


def test_batched_jobs_keep_their_leases_and_attempts(host):
    bench = Bench(host)
    jobs = [bench.send(1) for _ in range(2)]
    bench.runner.run(jobs[0])
    for job in jobs:
        record = bench.records._record(job)
        assert record["attempts"] == 1 and record["lease_owner"] == "test"
    assert bench.records.expired_leases() == []


@pytest.fixture(scope="module")
def efficientnet_host() -> ModelHost:
    made = ModelHost(ModelRegistry(), "cpu", ["efficientnet-lite0"])
    made.load_all()
    return made


def test_the_first_gradient_method_s_forward_is_the_prediction(efficientnet_host):
    """No OoD head, top-k targets: the prediction comes from GradCAM's own forward pass (no "predict"
    pass), with the same predictions and maps as a job whose explicit targets make it run apart."""
    from PIL import Image
    from skimage import data

    cat = encode(Image.fromarray(data.chelsea()).resize((224, 224)), "JPEG")
    bench = Bench(efficientnet_host)
    request = {"model": "efficientnet-lite0", "methods": [{"name": "gradcam"}, {"name": "gradient"}]}
    shared = build_spec(
        ExplainOptions.model_validate({**request, "targets": {"top_k": 2}, "outputs": ["raw"]}),
        [cat],
        bench.registry,
        lambda m: None,
        bench.settings,
    )
    bench.records.create(*shared)
    assert bench.runner.run(shared[0].job_id) == "succeeded"
    view = bench.records.view(shared[0].job_id)
    assert view.timings_ms["predict"] == 0.0, "no separate prediction pass"
    classes = [p.class_id for p in view.result.images[0].predictions]
    apart = build_spec(
        ExplainOptions.model_validate({**request, "targets": [classes[:2]], "outputs": ["raw"]}),
        [cat],
        bench.registry,
        lambda m: None,
        bench.settings,
    )
    bench.records.create(*apart)
    bench.runner.run(apart[0].job_id)
    other = bench.records.view(apart[0].job_id)
    assert other.timings_ms["predict"] > 0
    assert [p.class_id for p in other.result.images[0].predictions] == classes
    for position in range(4):  # gradcam x 2 targets, gradient x 2 targets
        # float16 maps of the same computation (eval mode, same inputs): equal to float16 rounding.
        assert np.allclose(raw(view, 0, position), raw(other, 0, position), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradient", "guided_backprop"])
def test_one_forward_pass_gives_the_prediction_the_ood_score_and_the_maps(host, method):
    """lenet5-shapes has an OoD head whose features its plain pass computes (relu4): a job explaining
    its top class runs the network forward once, and its predictions, OoD scores and maps are those of
    the path with a pass of their own (asked targets take it). Tolerances: the same operations on the
    same values in another order of passes, so float32 rounding (1e-5); the maps through float16."""
    counted = []
    network = host.network("lenet5-shapes")
    handle = network.register_forward_hook(lambda module, args, output: counted.append(len(args[0])))
    bench = Bench(host)
    methods = [{"name": method}]
    try:
        lead = bench.send(3, methods=methods)
        assert bench.runner.run(lead) == "succeeded"
        assert counted == [3], "one forward pass over the three images"
        top = bench.records.view(lead)
        targets = [[image.predictions[0].class_id] for image in top.result.images]
        counted.clear()
        separate = bench.send(3, methods=methods, targets=targets)
        assert bench.runner.run(separate) == "succeeded"
        assert len(counted) == 2, "with targets given: the prediction's pass, then the method's"
    finally:
        handle.remove()
    apart = bench.records.view(separate)
    for image, (one, two) in enumerate(zip(top.result.images, apart.result.images, strict=True)):
        assert [p.class_id for p in one.predictions] == [p.class_id for p in two.predictions]
        assert np.allclose(
            [p.probability for p in one.predictions], [p.probability for p in two.predictions], atol=1e-5
        )
        assert one.ood_score is not None and one.ood_score == pytest.approx(two.ood_score, abs=1e-5)
        first, second = raw(top, image), raw(apart, image)
        assert np.allclose(first, second, rtol=2e-3, atol=2e-3 * float(np.abs(second).max()))
