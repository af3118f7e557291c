"""The core of the perturbation explainers (Occlusion, RISE, RISEPlus): batched masked forwards.

Each image is perturbed K times: perturbation k keeps the pixels where ``keep_k`` is 1 and puts the
reference value where it is 0, ``x_k = r + keep_k ⊙ (x - r)``. Every masked image is weighed per class
(``w_k``: (num_classes,)), and the weights of the targets are spread over a map-space mask ``credit_k``:
``total[n, l] = sum_k w_k[t_nl] · credit_k`` — one matrix product per batch, every target of an image
from the same forward pass. The masked images of all images run in batches of ``perturbation_per_eval``
(a default per device and image size, :func:`default_batch`) under ``torch.inference_mode()``; a CUDA out-of-memory
error halves the batch and retries it. ``progress(fraction_done)`` is called after every batch; to
cancel, raise from it (the exception propagates, the model is given back as found).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._base import Explainer, _check_device
from ._inference_copy import forward_twin
from ._model_state import explaining
from ._top_targets import TopTargets, top_targets
from ._validation import check_inputs, check_positive_int, check_targets_in_range, normalise_targets

# Masked images per forward pass unless ``perturbation_per_eval`` says otherwise: as many as fit a budget
# of input bytes, at most a cap. CPU, measured through the forward twin (BatchNorm folded, channels_last),
# 2 threads, tuned glibc malloc (docs/benchmarks.md): LeNet5 at 32x32 is best from 256 up (23 us per
# masked image; 40 us at 16); EfficientNet-Lite0 at 224x224 is flat within the machine's noise from 6 to 64
# (5.2-5.8 ms) and worse at 4. 4 MiB gives 256 for LeNet5 and 6 for EfficientNet-Lite0.
# CUDA: not measured (no GPU here): a larger budget; out-of-memory halves it anyway.
BATCH_BUDGET = {"cpu": (4 << 20, 256), "cuda": (64 << 20, 1024)}  # device type -> (bytes, most rows)


def default_batch(inputs: Tensor) -> int:
    """Masked images per forward pass for images like ``inputs`` (N, C, H, W) on their device."""
    budget, cap = BATCH_BUDGET.get(inputs.device.type, BATCH_BUDGET["cpu"])
    return max(1, min(cap, budget // (inputs[0].numel() * inputs.element_size())))


ActivationFn = Callable[[Tensor], Tensor]
Progress = Callable[[float], object]
Masks = Callable[[Tensor], tuple[Tensor, Tensor]]
Weigh = Callable[[Tensor, Tensor], Tensor]


class PerturbationExplainer(Explainer):
    """Base class: ``explainer(inputs, targets, *, progress=None) -> (N, 1 or l, H, W)``.

    ``activation_fn`` turns the network's logits (N, C) into probabilities (N, C): ``nn.Softmax(dim=1)``,
    ``torch.sigmoid`` or any callable. ``perturbation_per_eval``: masked images per forward pass
    (default: :func:`default_batch`, per device and image size). ``inference_copy``: run the masked
    batches through a BatchNorm-folded, channels_last (on CPU) copy of the network, made once per
    network and weights and cached (``_inference_copy.py``); ``False`` runs the network itself, for a
    model that cannot spare a copy's memory or must see every call.
    """

    def __init__(
        self,
        network: nn.Module,
        activation_fn: ActivationFn,
        perturbation_per_eval: int | None = None,
        *,
        inference_copy: bool = True,
    ) -> None:
        super().__init__(network)
        if not callable(activation_fn):
            raise TypeError(
                "activation_fn must be callable (e.g. torch.nn.Softmax(dim=1) or torch.sigmoid), "
                f"got {type(activation_fn).__name__}"
            )
        self.activation_fn = activation_fn
        if perturbation_per_eval is not None:
            check_positive_int(perturbation_per_eval, "perturbation_per_eval")
        self.perturbation_per_eval = perturbation_per_eval
        if not isinstance(inference_copy, bool):
            raise TypeError(f"inference_copy must be a bool, got {type(inference_copy).__name__}")
        self.inference_copy = inference_copy
        self._batch_after_oom: dict[tuple, int] = {}  # per device and image shape: later calls skip the wall
        self.forward_network = network  # what runs the masked batches: the network or its twin, per call

    def __call__(self, inputs: Tensor, targets: object, *, progress: Progress | None = None) -> Tensor:
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be a callable taking the fraction done, got {type(progress).__name__}")
        inputs = check_inputs(inputs)
        _check_device(self.network, inputs)
        deferred = isinstance(targets, TopTargets)
        rows = None if deferred else normalise_targets(targets, len(inputs), inputs.device)
        channels_last = inputs.dim() == 4 and (inputs.device.type == "cpu" or _is_channels_last(inputs))
        with explaining(self.network):
            if deferred:
                with top_targets(self.network, inputs.detach(), targets.k, from_first_forward=False) as (rows, out):
                    self.last_outputs = out[0]
            if self.inference_copy:
                self.forward_network = forward_twin(self.network, inputs.detach(), channels_last)
            if self.forward_network is not self.network and channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                maps = self.explain(inputs.detach(), rows, progress)
        return maps.to(inputs.dtype, memory_format=torch.contiguous_format, copy=True)  # a normal tensor

    def explain(self, inputs: Tensor, targets: Tensor, progress: Progress | None = None) -> Tensor:
        raise NotImplementedError

    def probabilities(self, batch: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes): ``activation_fn(network(batch))``, through the forward-only twin."""
        return self.activate(self.forward_network(batch), len(batch))

    def activate(self, logits: object, rows: int) -> Tensor:
        """Checked ``activation_fn(logits)``: (rows, num_classes) -> (rows, num_classes)."""
        _check_scores(logits, rows, "network")
        probabilities = self.activation_fn(logits)
        _check_scores(probabilities, rows, "activation_fn")
        return probabilities

    def perturb(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        count: int,
        masks: Masks,
        weigh: Weigh,
        reference: Tensor | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """``total[n, l] = sum_k weigh(x_k, n)[t_nl] · credit_k`` over the ``count`` perturbations of each image.

        inputs: (N, C, H, W); targets: (N, L). ``masks(k)``: (b,) perturbation indices -> ``(keep, credit)``,
        each (b, H, W). ``weigh(batch, images)``: (B, C, H, W) masked images of ``images`` (B,) ->
        (B, num_classes). ``reference``: broadcastable to (1 or N, C, H, W); default 0. Returns (N, L, H, W) in
        float32 at least (sums of thousands of terms), whatever the inputs' precision.
        """
        n, _, height, width = inputs.shape
        rows = n * count
        # Sums of thousands of terms: at least float32, also for half-precision inputs.
        total = inputs.new_zeros(
            (n, targets.shape[1], height * width), dtype=torch.promote_types(inputs.dtype, torch.float32)
        )
        shape_key = (inputs.device, tuple(inputs.shape[1:]), inputs.dtype)
        batch = self._batch_after_oom.get(shape_key) or self.perturbation_per_eval or default_batch(inputs)
        batch = min(batch, rows)
        start = 0
        while start < rows:
            stop = min(start + batch, rows)
            try:
                _accumulate(total, inputs, targets, start, stop, count, masks, weigh, reference)
            except torch.cuda.OutOfMemoryError:
                if batch == 1:
                    raise
                batch = self._batch_after_oom[shape_key] = batch // 2
                out_of_memory = True
            else:
                out_of_memory = False
            if out_of_memory:  # outside the except block: the failed batch's tensors are freed by now
                torch.cuda.empty_cache()
                continue
            start = stop
            if progress is not None:
                progress(start / rows)
        return total.view(n, -1, height, width)


def _accumulate(
    total: Tensor,
    inputs: Tensor,
    targets: Tensor,
    start: int,
    stop: int,
    count: int,
    masks: Masks,
    weigh: Weigh,
    reference: Tensor | None,
) -> None:
    """Rows ``start:stop`` of the (image, perturbation) grid: one forward pass, one matrix product."""
    device, dtype = inputs.device, inputs.dtype
    index = torch.arange(start, stop, device=device)
    images = index // count
    keep, credit = masks(index % count)
    keep = keep.to(dtype).unsqueeze(1)
    first, last = start // count, (stop - 1) // count
    per_image = reference is not None and reference.shape[0] == len(inputs) > 1
    if first == last:  # every row perturbs one image (the usual case): broadcast it rather than gather copies
        x = inputs[first : first + 1]
        base = reference[first : first + 1] if per_image else reference
    else:
        x = inputs[images]
        base = reference[images] if per_image else reference
    channels_last = _is_channels_last(inputs)
    if channels_last:  # work in (B, H, W, C): every operand dense in that order, the result channels_last
        x, keep, base = (None if t is None else t.permute(0, 2, 3, 1) for t in (x, keep, base))
    masked = x * keep if base is None else torch.lerp(base.to(dtype), x, keep)
    if channels_last:
        masked = masked.permute(0, 3, 1, 2)
    weights = weigh(masked, images)
    if start == 0:
        check_targets_in_range(targets, weights.shape[1])
    chosen = weights.gather(1, targets[images])  # (B, L)
    owner = (images - first).unsqueeze(0) == torch.arange(last - first + 1, device=device).unsqueeze(1)
    # (n_b, L, B): the weight of row b for image n_b, zero where b belongs to another image
    coefficients = owner.to(total.dtype).unsqueeze(1) * chosen.to(total.dtype).t().unsqueeze(0)
    spread = coefficients.flatten(0, 1) @ credit.to(total.dtype).flatten(1)  # (n_b * L, H * W)
    total[first : last + 1] += spread.view(last - first + 1, -1, total.shape[2])


def _is_channels_last(inputs: Tensor) -> bool:
    return not inputs.is_contiguous() and inputs.is_contiguous(memory_format=torch.channels_last)


def _check_scores(scores: object, rows: int, name: str) -> None:
    if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[0] != rows:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{name} must return an (N, num_classes) tensor of scores, got {shape}")
