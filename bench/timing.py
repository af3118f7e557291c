"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn


def median_ms(run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def interleaved_ms(runs: list[Callable[[], object]], repeats: int, warmup: int = 1) -> list[float]:
    """The median of each run, the runs taking turns: a shared machine's drift weighs on all alike."""
    for run in runs:
        for _ in range(warmup):
            run()
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, times in zip(runs, samples, strict=True):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return [statistics.median(times) * 1000 for times in samples]


def allocator_setting(env: Mapping[str, str] | None = None) -> str:
    """The glibc allocator setting of this process, or of the environment ``env`` (another process's)."""
    env = os.environ if env is None else env
    keys = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")
    found = {key: env.get(key) for key in keys}
    if all(found.values()):
        return "tuned glibc malloc (" + ", ".join(f"{k}={v}" for k, v in found.items()) + ")"
    return "default glibc malloc"


def forward_backward(network: nn.Module, inputs: torch.Tensor, target: int) -> Callable[[], object]:
    """The bare cost a gradient method cannot avoid: one forward and one backward to the input."""

    def run() -> object:
        x = inputs.detach().requires_grad_(True)
        return torch.autograd.grad(network(x)[:, target].sum(), x)

    return run


def forward_only(network: nn.Module, inputs: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return network(inputs)

    return run


def machine() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"


def frozen(network: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: the state our explainers put a network in, for all sides."""
    for param in network.parameters():
        param.requires_grad_(False)
    return network.eval()
