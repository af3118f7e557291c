"""The models one worker process holds: networks, OoD heads, what each can do, one lock each.

Each model loads on its own: one that fails is recorded in ``failed`` with its error, and the
others are served (``served``). A model that loads but cannot run some methods (a TorchScript archive
takes no hooks; a model without an OoD head has no RISEPlus) is served with those methods listed as
unavailable, with the reason (:class:`core.capabilities.Capabilities`).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from core.capabilities import Capabilities
from core.contract import SpatialOptions
from core.images import decode_mask
from core.methods import METHODS
from models.loading import sha256_of
from models.manifest import Manifest, ModelLoadError, WeightsError
from models.registry import ModelRegistry
from workers.methods import Context
from workers.xai import (
    AttentionTape,
    OoDNet,
    RectifierTape,
    SpatialScores,
    explaining,
    is_token_layer,
    token_grid,
)

log = logging.getLogger(__name__)

SCRIPTED = (
    "a TorchScript network takes no layer hooks and no rectifier rules (serve its state dict with its "
    "architecture for this method)"
)


# A team of threads must run a small model's forward pass this much faster than one thread. Measured at
# batch 1, channels_last, 2 cores, medians of rounds: LeNet-5 and the shapes ViT 0.9-1.1x.
PARALLEL_GAIN = 1.15
FORWARD_ROUNDS = 5
ROUND_MS = 10.0  # passes of a round, per side, at least this long (at most 100 passes)
SMALL_MS = 5.0  # a forward pass on one thread cheaper than this may be too small for a team


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for the block, the caller's count put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ModelHost:
    def __init__(self, registry: ModelRegistry, device: str = "cpu", served: Iterable[str] = ()) -> None:
        self.registry = registry
        self.device = device
        self.wanted = list(served) or registry.names()
        for name in self.wanted:
            registry.manifest(name)  # unknown names fail at start-up
        self.served: list[str] = []  # loaded, in the order wanted
        self.failed: dict[str, str] = {}  # model -> why it did not load
        self._locks = {name: threading.Lock() for name in registry.names()}
        self._ood: dict[str, OoDNet | None] = {}
        self._ood_errors: dict[str, str] = {}
        self._ood_features: dict[str, str | None] = {}  # the module whose output the head reads, if any
        self._one_thread: dict[str, bool] = {}  # its jobs run on one torch thread (``threads``)
        self._capabilities: dict[str, Capabilities] = {}
        self._spatial: dict[str, SpatialScores] = {}
        self._guard = threading.RLock()

    def manifest(self, name: str) -> Manifest:
        return self.registry.manifest(name)

    def network(self, name: str) -> nn.Module:
        """The model's network; one with spatial scores returns its (N, C) class scores (``SpatialScores``)."""
        network = self.registry.network(name, self.device)
        if self.manifest(name).spatial_scores:
            with self._guard:
                if name not in self._spatial:
                    if scripted(network):
                        raise ModelLoadError(
                            "spatial scores are read by a forward hook, which TorchScript does not take"
                        )
                    self._spatial[name] = SpatialScores()
                    self._spatial[name].attach(network)
        return network

    def lock(self, name: str) -> threading.Lock:
        """Held while a job hooks the model: explainers toggle its flags and hooks."""
        return self._locks[name]

    def ood_net(self, name: str) -> OoDNet | None:
        """The model's OoD head; None without one, or when it did not load (``capabilities`` says why)."""
        with self._guard:
            if name not in self._ood:
                try:
                    self._ood[name] = self._load_ood(self.manifest(name))
                except Exception as error:  # the model serves on without RISEPlus and OoD scores
                    log.error("model %s: its OoD head did not load: %s", name, error)
                    self._ood[name], self._ood_errors[name] = None, f"its OoD head did not load: {error}"
            return self._ood[name]

    def _load_ood(self, manifest: Manifest) -> OoDNet | None:
        if manifest.ood_head is None:
            return None
        path = manifest.path(manifest.ood_head.file)
        found = sha256_of(path)
        if found != manifest.ood_head.sha256:
            raise WeightsError(
                f"model {manifest.name!r}: OoD head {path} has SHA-256 {found}, expected {manifest.ood_head.sha256}"
            )
        network = self.network(manifest.name)
        if scripted(network):
            raise ModelLoadError(
                "an OoD head switches the network's output_features, which a TorchScript archive has compiled in"
            )
        ood = OoDNet(network, manifest.num_classes).load(path).to(self.device)
        ood.set_train(False)
        sample = torch.rand(2, 3, *manifest.preprocessing.size, generator=torch.Generator().manual_seed(0))
        self._ood_features[manifest.name] = ood.feature_module(sample.to(self.device))
        return ood

    def ood_features(self, name: str) -> str | None:
        """The module of the model whose output its OoD head reads, when a plain pass computes it
        (``OoDNet.feature_module``): an explanation's forward pass then also gives the OoD score."""
        return self._ood_features.get(name) if self.ood_net(name) is not None else None

    def context(self, name: str, seed: int | None = None) -> Context:
        """What the model's explainers are built from: its network, default layer, OoD head, probabilities."""
        return Context(
            self.network(name),
            self.capabilities(name).default_layer or "",
            seed,
            self.ood_net(name),
            self.manifest(name).probabilities,
            self.ood_features(name),
        )

    @contextmanager
    def spatial(self, name: str, options: SpatialOptions | None) -> Iterator[None]:
        """For the block (the model's lock held): a model with spatial scores scores classes over the request's
        box, and with TorchRay's pointing gradient if asked; put back to the plain sum after."""
        self.network(name)
        scores = self._spatial.get(name)
        if scores is None or options is None:
            yield
            return
        scores.box, scores.pointing = options.box, options.pointing
        scores.mask = None if options.mask is None else torch.from_numpy(decode_mask(options.mask))
        try:
            yield
        finally:
            scores.box, scores.mask, scores.pointing = None, None, False

    def layers(self, name: str) -> list[str]:
        """Modules that give a spatial activation exactly once per forward pass: the layer methods' choices."""
        found = self.capabilities(name).layers.values()
        return list(dict.fromkeys(layer for layers in found for layer in layers))  # in forward order

    def capabilities(self, name: str) -> Capabilities:
        """The methods that run on the model and the layers each layer method may use, found by one forward
        pass. ModelLoadError when the manifest's ``gradcam_layer`` cannot serve the layer methods."""
        with self._guard:
            if name not in self._capabilities:
                self._capabilities[name] = self._find_capabilities(name)
            return self._capabilities[name]

    def _find_capabilities(self, name: str) -> Capabilities:
        manifest = self.manifest(name)
        network = self.network(name)
        unavailable: dict[str, str] = {}
        if scripted(network):
            layers: list[str] = []
            unavailable |= {
                m: SCRIPTED
                for m, method in METHODS.items()
                if method.uses_layer or method.rectifies or method.uses_attention
            }
        else:
            layers, rectifiers, attention = self._probe(name)
            if not rectifiers:
                why = "the network's forward pass has no ReLU, ReLU6 or Hardtanh: the rule would change nothing"
                unavailable |= {m: why for m, method in METHODS.items() if method.rectifies}
            if attention is not None:
                unavailable |= {m: attention for m, method in METHODS.items() if method.uses_attention}
        if manifest.gradcam_layer and manifest.gradcam_layer not in layers:
            choices = ", ".join(layers[-5:]) if layers else "none"
            raise ModelLoadError(
                f"model {name!r}: field 'gradcam_layer': {manifest.gradcam_layer!r} is not a layer that gives a "
                f"(N, C, h, w) activation, or (N, T, C) patch tokens, once per forward pass (the last such layers: "
                f"{choices})"
            )
        for method_name, method in METHODS.items():
            if method.uses_layer and not layers and method_name not in unavailable:
                unavailable[method_name] = "no layer of the network gives a (N, C, h, w) activation once per pass"
            if method.needs_ood_head and self.ood_net(name) is None:
                unavailable[method_name] = self._ood_errors.get(name, "the model has no OoD head (ood_head)")
        usable = {m: layers for m, method in METHODS.items() if method.uses_layer and m not in unavailable}
        default = manifest.gradcam_layer or (layers[-1] if layers else None)
        return Capabilities(
            default_layer=default, layers=usable, unavailable=unavailable, forward_ms=self._forward_ms(name)
        )

    def _forward_ms(self, name: str) -> float:
        """A forward pass of one blank image, in the layout jobs give it (channels_last): what a method's
        passes cost here. On a CPU, a network cheaper than ``SMALL_MS`` on one thread is timed on one thread
        too, in rounds that time both ways back to back (``ROUND_MS`` of passes each, so that a 0.2 ms network
        is not timed at the clock's grain): if a team of threads runs it less than ``PARALLEL_GAIN`` times
        faster (the median of the rounds' ratios: a round's two sides see the same neighbours), its jobs run
        on one thread (:meth:`threads`). A dearer network keeps the team whatever its pass measured: its
        operations are large enough to split, and a low gain there meant busy cores (EfficientNet-Lite0
        measured 1.05-1.5x at batch 1 on a shared 2-core machine, 1.7-2.1x at batch 16)."""
        single = self._forward_times(name, 6)[1:]  # the first pass is a warm-up
        if self.device == "cpu" and torch.get_num_threads() > 1:
            self._one_thread[name] = self._team_too_slow(name, min(single))
        return round(statistics.median(single), 3)

    def _team_too_slow(self, name: str, team_ms: float) -> bool:
        """Whether ``name`` is small and runs less than ``PARALLEL_GAIN`` times faster on the caller's team
        of threads than on one (:meth:`_forward_ms`)."""
        with one_thread():
            if min(self._forward_times(name, 2)[1:]) >= SMALL_MS:  # after one thread's own warm-up
                return False
        passes = max(1, min(100, round(ROUND_MS / team_ms)))
        gains = []
        for _ in range(FORWARD_ROUNDS):
            team = sum(self._forward_times(name, passes))
            with one_thread():
                gains.append(sum(self._forward_times(name, passes)) / team)
        return statistics.median(gains) < PARALLEL_GAIN

    def _forward_times(self, name: str, passes: int) -> list[float]:
        """ms of each of ``passes`` forward passes of a blank image."""
        network, size = self.network(name), self.manifest(name).preprocessing.size
        blank = torch.zeros(1, 3, *size, device=self.device).contiguous(memory_format=torch.channels_last)
        times = []
        with self.lock(name), torch.inference_mode():
            for _ in range(passes):
                started = time.perf_counter()
                network(blank)
                times.append((time.perf_counter() - started) * 1000)
        return times

    def threads(self, name: str) -> AbstractContextManager[None]:
        """For the block: one torch thread for a model too small to split (measured at load), else the
        caller's. An OpenMP team's idle threads spin after every parallel region: on LeNet-5, two threads ran
        GradCAM no faster than one (0.60 against 0.64 ms) for twice the CPU, the cores the API and Redis
        need (docs/benchmarks.md)."""
        return one_thread() if self._one_thread.get(name) else nullcontext()

    def _probe(self, name: str) -> tuple[list[str], bool, str | None]:
        """One forward pass on a blank image, recorded: (the layers that give a spatial map once per pass —
        (N, C, h, w), or (N, T, C) tokens of a patch grid — in forward order; whether a rectifier ran; why
        the attention methods cannot run, or None)."""
        network = self.network(name)
        size = self.manifest(name).preprocessing.size
        shapes: dict[str, list[tuple[int, ...]]] = {}

        def recorder(module_name: str):
            def record(module: nn.Module, args: tuple, output: object) -> None:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
                shapes.setdefault(module_name, []).append(shape)

            return record

        handles = [module.register_forward_hook(recorder(n)) for n, module in network.named_modules() if n]
        blank = torch.zeros(1, 3, *size, device=self.device, requires_grad=True)
        try:
            with self.lock(name), explaining(network), RectifierTape() as rectifiers, AttentionTape() as attention:
                network(blank)
        finally:
            for handle in handles:
                handle.remove()
        layers = [
            n for n, seen in shapes.items() if len(seen) == 1 and (len(seen[0]) == 4 or is_token_layer(seen[0], size))
        ]
        if not attention.maps:
            why: str | None = (
                "the network's forward pass computes no attention "
                "(a softmax over (N, heads, T, T), or F.scaled_dot_product_attention)"
            )
        elif token_grid(attention.maps[0].shape[-1], size) is None:
            why = f"its attention over {attention.maps[0].shape[-1]} tokens holds no patch grid of the input"
        else:
            why = None
        return layers, rectifiers.calls > 0, why

    def load_all(self) -> None:
        """Build every wanted model now, each on its own (a worker does this before taking its jobs).

        The loading runs on a thread of its own that ends before this returns. Each thread that runs a
        parallel torch operation keeps an OpenMP pool of threads for its life (libgomp); once a process holds
        more such threads than cores, every pool's threads stop spinning between operations, and GradCAM on
        EfficientNet-Lite0 in the jobs' thread ran 2.5x slower (40 against 16 ms, 2 cores) for as long as
        the thread that had loaded the models lived (the API's main thread, in the embedded mode)."""
        raised: list[BaseException] = []

        def load() -> None:
            try:
                self._load_each()
            except BaseException as error:  # what a model's own failure is not: raised on the caller's thread
                raised.append(error)

        loader = threading.Thread(target=load, name="xai-load-models")
        loader.start()
        loader.join()
        if raised:
            raise raised[0]

    def _load_each(self) -> None:
        for name in self.wanted:
            try:
                self.network(name)
                self.capabilities(name)
            except Exception as error:  # any failure of a user's model: it is unavailable, the rest serve
                log.error("model %s failed to load: %s: %s", name, type(error).__name__, error)
                self.failed[name] = f"{type(error).__name__}: {error}"
            else:
                self.served.append(name)


def scripted(network: nn.Module) -> bool:
    """A TorchScript network, or one holding one: hooks and torch function modes do not reach inside."""
    return any(isinstance(module, torch.jit.ScriptModule) for module in network.modules())
