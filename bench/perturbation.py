"""Perturbation explainers against Captum, captum-rise and the bare forward passes they need.

    python -m bench.perturbation [--repeats 3] [--quick]

Every table is measured in one run, on the same input, with the network frozen and in eval mode; the
contenders of a row run in turn, repeat after repeat (``interleaved_ms``), so a change in the
machine's load weighs on all of them alike:

- Occlusion: ours (default batch) against Captum's ``Occlusion`` at its default
  (``perturbations_per_eval=1``, the network and input as given) and at its best (16 per eval, the
  network and input both channels_last), the same windows, probabilities and reference (0).
- RISE: ours against the bare cost of the same number of forward passes, at the fastest of a few
  batch sizes (``bare``: the network as given, channels_last input; ``twin``: the BatchNorm-folded,
  channels_last copy our explainers run), and against the PyPI package ``captum-rise`` (one forward
  per mask, a mask made per call with Python loops; its maps are normalised differently, so time
  only).
- Targets: the cost of five targets of one image against one (all from the same passes).
- Batch size: our time per masked image at several ``perturbation_per_eval``; ``*`` marks the default.
- RISEPlus: one backbone pass per batch for class and OoD scores against the two-pass fallback.
- RISE masks: drawing and expanding 1,000 masks at 224x224 against a per-mask loop (the authors'
  ``skimage`` resize, and ``F.interpolate``), and what storing them costs.

``--quick`` runs tiny sizes (a check that the script works, not a measurement).
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from bench.timing import allocator_setting, frozen, interleaved_ms, machine, median_ms
from core.methods import call
from models.lenet5 import LeNet5
from models.registry import ModelRegistry
from workers.methods import Context, build_explainer
from workers.xai import RISE, Explainer, OoDNet
from workers.xai._perturbation import default_batch
from workers.xai.occlusion import default_window
from workers.xai.rise import MaskSet, mask_set

SOFTMAX = nn.Softmax(dim=1)


def our_explainer(network: nn.Module, name: str, ood_net: OoDNet | None = None, **params: Any) -> Explainer:
    """Our explainer of method ``name``, built as the service builds it (``workers/methods.py``); no layer used."""
    return build_explainer(call(name, **params), Context(network, default_layer="", ood_net=ood_net))


def probabilities(network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return SOFTMAX(network(batch))


def bare_forwards(network: nn.Module, x: torch.Tensor, rows: int, batch: int) -> Callable[[], object]:
    """``rows`` forward passes of distinct masked copies of ``x`` (1, C, H, W), ``batch`` at a time.

    The copies are made beforehand and all differ (RISE's own masks), as an explainer's do: one batch
    run again and again stays in the CPU's caches and runs LeNet5 ~25% faster, a bare cost no
    explainer could reach.
    """
    masks = mask_set(*x.shape[2:], rows, 10, 0.5, 0, x.device)(torch.arange(rows, device=x.device))
    full = (x * masks.unsqueeze(1)).contiguous(memory_format=_format(x))
    batches = full.split(batch)

    def run() -> object:
        with torch.inference_mode():
            for part in batches:
                out = network(part)
            return out

    return run


def fastest_bare(
    network: nn.Module, x: torch.Tensor, rows: int, sizes: list[int], repeats: int
) -> tuple[Callable[[], object], int]:
    """The bare forward passes at the fastest of the batch sizes tried, and that size."""
    _, size = min((median_ms(bare_forwards(network, x, rows, size), repeats, warmup=1), size) for size in sizes)
    return bare_forwards(network, x, rows, size), size


def _format(x: torch.Tensor) -> torch.memory_format:
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def channels_last(network: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A channels_last copy of the network and input: the layout Captum runs fastest in here."""
    return copy.deepcopy(network).to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)


def captum_occlusion(
    network: nn.Module, x: torch.Tensor, target: int, window: tuple[int, int], per_eval: int
) -> Callable[[], object]:
    occlusion = CaptumOcclusion(partial(probabilities, network))
    channels, (size, stride) = x.shape[1], window
    return lambda: occlusion.attribute(
        x,
        sliding_window_shapes=(channels, size, size),
        strides=(channels, stride, stride),
        target=target,
        perturbations_per_eval=per_eval,
    )


def occlusion_table(cases: list[tuple[str, nn.Module, torch.Tensor, int, tuple[int, int]]], repeats: int) -> None:
    print("\n### Occlusion against Captum (same windows)\n")
    print("Captum ppe=1: its default, network and input as given; ppe=16: its best, both channels_last.\n")
    print(
        "| model | window, stride | windows | ours ms | Captum ppe=1 ms | Captum ppe=16 ms | C1 / ours | C16 / ours |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, network, x, target, window in cases:
        size, stride = window
        windows = (math.ceil((x.shape[2] - size) / stride) + 1) ** 2
        explainer = our_explainer(network, "occlusion", window=(size, size), strides=(stride, stride))
        ours, one, sixteen = interleaved_ms(
            [
                partial(explainer, x, target),
                captum_occlusion(network, x, target, window, 1),
                captum_occlusion(*channels_last(network, x), target, window, 16),
            ],
            repeats,
        )
        ratios = f"{one / ours:.2f} | {sixteen / ours:.2f}"
        print(f"| {name} | {window} | {windows} | {ours:.0f} | {one:.0f} | {sixteen:.0f} | {ratios} |", flush=True)


def rise_table(cases: list[tuple[str, nn.Module, torch.Tensor, int, int, list[int]]], repeats: int) -> None:
    from rise import RISE as CaptumRISE  # the PyPI package captum-rise

    print("\n### RISE against the bare forward passes and captum-rise\n")
    print(
        "| model | masks | ours ms | bare ms (batch) | twin ms (batch) | ours / bare | ours / twin "
        "| captum-rise ms | captum-rise / ours |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, network, x, target, masks, sizes in cases:
        explainer = our_explainer(network, "rise", num_masks=masks)
        assert isinstance(explainer, RISE)  # its forward_network: the twin
        explainer(x, target)  # makes the twin
        as_given = x.contiguous(memory_format=torch.channels_last)
        bare, batch = fastest_bare(network, as_given, masks, sizes, repeats)
        twin, twin_batch = fastest_bare(explainer.forward_network, as_given, masks, sizes, repeats)
        theirs = partial(captum_rise, CaptumRISE(partial(probabilities, network)), x, masks=masks, target=target)
        ours, bare_ms, twin_ms, other = interleaved_ms([partial(explainer, x, target), bare, twin, theirs], repeats)
        print(
            f"| {name} | {masks} | {ours:.0f} | {bare_ms:.0f} ({batch}) | {twin_ms:.0f} ({twin_batch}) "
            f"| {ours / bare_ms:.2f} | {ours / twin_ms:.2f} | {other:.0f} | {other / ours:.1f} |",
            flush=True,
        )


def captum_rise(explainer: object, x: torch.Tensor, *, masks: int, target: int) -> object:
    with torch.inference_mode():
        return explainer.attribute(x, n_masks=masks, initial_mask_shapes=((10, 10),), target=target)


def targets_table(cases: list[tuple[str, Callable[[], Explainer], torch.Tensor, list[int]]], repeats: int) -> None:
    print("\n### Five targets of one image against one\n")
    print("| model and method | 1 target ms | 5 targets ms | extra per target |")
    print("| --- | ---: | ---: | ---: |")
    for name, make, x, classes in cases:
        explainer = make()
        one, five = interleaved_ms(
            [partial(explainer, x, classes[0]), partial(explainer, x, torch.tensor([classes]))], repeats
        )
        print(f"| {name} | {one:.0f} | {five:.0f} | {(five / one - 1) / 4:+.1%} |", flush=True)


def batch_table(cases: list[tuple[str, nn.Module, torch.Tensor, int, list[int]]], repeats: int) -> None:
    print("\n### RISE time per masked image by batch size (`*`: the default)\n")
    print("| model | perturbation_per_eval | ms per masked image |")
    print("| --- | ---: | ---: |")
    for name, network, x, masks, sizes in cases:
        default = default_batch(x)
        for size in sorted({*sizes, default}):
            # direct: the catalogue has no perturbation_per_eval (nor LeNet5's 4 x 6,000 masks, over its MAX_MASKS)
            ms = median_ms(partial(RISE(network, SOFTMAX, size, num_masks=masks), x, 1), repeats, warmup=1) / masks
            print(f"| {name} | {size}{' *' if size == default else ''} | {ms:.3f} |", flush=True)


def rise_plus_table(network: LeNet5, x: torch.Tensor, masks: int, repeats: int) -> None:
    class TwoPasses(nn.Module):  # the same network without classify_features: RISEPlus falls back
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.num_features, self.output_features = network, network.num_features, False

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            self.inner.output_features = self.output_features
            try:
                return self.inner(batch)
            finally:
                self.inner.output_features = False

    wrapped = TwoPasses()
    shared = our_explainer(network, "rise_plus", OoDNet(network, 10), num_masks=masks)
    fallback = our_explainer(wrapped, "rise_plus", OoDNet(wrapped, 10), num_masks=masks)
    print("\n### RISEPlus: one backbone pass per batch against two\n")
    print("| model | masks | shared ms | two passes ms | two / shared |")
    print("| --- | ---: | ---: | ---: | ---: |")
    one = median_ms(lambda: shared(x, 1), repeats, warmup=1)
    two = median_ms(lambda: fallback(x, 1), repeats, warmup=1)
    print(f"| LeNet5 32x32 | {masks} | {one:.0f} | {two:.0f} | {two / one:.2f} |", flush=True)


def masks_table(count: int, repeats: int) -> None:
    from skimage.transform import resize

    height = width = 224
    cells, device = 10, torch.device("cpu")
    up = ((cells + 1) * math.ceil(height / cells), (cells + 1) * math.ceil(width / cells))
    made = MaskSet(height, width, count, cells, 0.5, 0, device)
    everything = torch.arange(count)

    def draw() -> object:
        return MaskSet(height, width, count, cells, 0.5, 0, device)

    def expand() -> object:
        return [made(everything[i : i + 64]) for i in range(0, count, 64)]

    def loop(upsample: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            out = []
            for k in range(count):
                dy, dx = int(made.shifts_h[k]), int(made.shifts_w[k])
                out.append(upsample(made.grids[k].float())[dy : dy + height, dx : dx + width])
            return out

        return run

    def authors(grid: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(resize(grid.numpy(), up, order=1, mode="reflect", anti_aliasing=False))

    def interpolate(grid: torch.Tensor) -> torch.Tensor:
        return F.interpolate(grid[None, None], size=up, mode="bilinear", align_corners=False)[0, 0]

    stored = made.nbytes()
    full = count * height * width * 4
    print(f"\n### RISE masks: {count:,} at {height}x{width}\n")
    print("| step | ms |")
    print("| --- | ---: |")
    for step, run in [
        ("draw the grids and shifts (stored)", draw),
        ("expand all of them, 64 at a time (what a call does)", expand),
        ("per-mask loop, skimage resize (the authors' code)", loop(authors)),
        ("per-mask loop, F.interpolate", loop(interpolate)),
    ]:
        print(f"| {step} | {median_ms(run, repeats, warmup=1):.0f} |", flush=True)
    print(f"\nStored: {stored / 1024:.0f} KiB (grids and shifts); as float32 masks: {full / 2**20:.0f} MiB.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--threads", type=int, help="torch threads (1 is steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    torch.manual_seed(0)
    print(f"# perturbation explainers — {machine()}; {allocator_setting()}; median of {repeats}")

    lenet = frozen(LeNet5())
    efficientnet = ModelRegistry().network("efficientnet-lite0")
    small = torch.randn(1, 3, 32, 32)
    big = torch.randn(1, 3, 224, 224)
    print("Inputs are given as torch makes them (contiguous); each contender's layout is said per table.")
    if args.quick:
        lenet_window, big_window, lenet_masks, big_masks = (8, 8), (56, 56), 64, 8
        lenet_sizes, big_sizes = [16, 64], [4, 8]
    else:
        lenet_window, big_window = default_window(32), default_window(224)  # MindSpore's: 900 and 1,024 windows
        lenet_masks, big_masks = 6000, 512
        lenet_sizes, big_sizes = [16, 64, 256, 1024], [4, 8, 16, 32, 64]
    occlusion_table(
        [
            ("LeNet5 32x32", lenet, small, 3, lenet_window),
            ("EfficientNet-Lite0 224x224", efficientnet, big, 285, big_window),
        ],
        repeats,
    )
    rise_table(
        [
            ("LeNet5 32x32", lenet, small, 3, lenet_masks, lenet_sizes),
            ("EfficientNet-Lite0 224x224", efficientnet, big, 285, big_masks, big_sizes),
        ],
        repeats,
    )
    classes = [285, 281, 282, 287, 728]
    targets_table(
        [
            (
                "EfficientNet-Lite0, RISE",
                lambda: our_explainer(efficientnet, "rise", num_masks=big_masks),
                big,
                classes,
            ),
            (
                "EfficientNet-Lite0, Occlusion",
                lambda: our_explainer(
                    efficientnet,
                    "occlusion",
                    window=(big_window[0], big_window[0]),
                    strides=(big_window[1], big_window[1]),
                ),
                big,
                classes,
            ),
            ("LeNet5, RISE", lambda: our_explainer(lenet, "rise", num_masks=lenet_masks), small, [3, 1, 4, 5, 9]),
        ],
        repeats,
    )
    batch_table(
        [
            ("LeNet5 32x32", lenet, small, lenet_masks * 4, lenet_sizes),
            ("EfficientNet-Lite0 224x224", efficientnet, big, 8 if args.quick else 128, big_sizes),
        ],
        repeats,
    )
    rise_plus_table(lenet, small, lenet_masks, repeats)
    masks_table(64 if args.quick else 1000, repeats)


if __name__ == "__main__":
    main()
