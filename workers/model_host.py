"""The models one worker process holds: networks, OoD heads, their layers, one lock each.

Each model loads on its own: one that fails is recorded in ``failed`` with its error, and the
others are served (``served``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import torch
from torch import nn

from models.loading import sha256_of
from models.manifest import Manifest, WeightsError
from models.registry import ModelRegistry
from workers.xai import OoDNet

log = logging.getLogger(__name__)


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
        self._layers: dict[str, list[str]] = {}
        self._guard = threading.Lock()

    def manifest(self, name: str) -> Manifest:
        return self.registry.manifest(name)

    def network(self, name: str) -> nn.Module:
        return self.registry.network(name, self.device)

    def lock(self, name: str) -> threading.Lock:
        """Held while a job hooks the model: explainers toggle its flags and hooks."""
        return self._locks[name]

    def ood_net(self, name: str) -> OoDNet | None:
        with self._guard:
            if name not in self._ood:
                self._ood[name] = self._load_ood(self.manifest(name))
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
        ood = OoDNet(network, manifest.num_classes).load(path).to(self.device)
        ood.set_train(False)
        return ood

    def layers(self, name: str) -> list[str]:
        """Modules that produce a 4-D activation exactly once per forward pass: GradCAM's choices."""
        with self._guard:
            if name not in self._layers:
                self._layers[name] = self._spatial_layers(name)
            return self._layers[name]

    def _spatial_layers(self, name: str) -> list[str]:
        network = self.network(name)
        height, width = self.manifest(name).preprocessing.size
        calls: dict[str, list[int]] = {}

        def recorder(module_name: str):
            def record(module: nn.Module, args: tuple, output: object) -> None:
                calls.setdefault(module_name, []).append(output.dim() if isinstance(output, torch.Tensor) else 0)

            return record

        handles = [module.register_forward_hook(recorder(n)) for n, module in network.named_modules() if n]
        try:
            with self.lock(name), torch.inference_mode():
                network(torch.zeros(1, 3, height, width, device=self.device))
        finally:
            for handle in handles:
                handle.remove()
        return [n for n, dims in calls.items() if dims == [4]]

    def load_all(self) -> None:
        """Build every wanted model now, each on its own (a worker does this before taking its jobs)."""
        for name in self.wanted:
            try:
                self.network(name)
                self.ood_net(name)
                self.layers(name)
            except Exception as error:  # any failure of a user's model: it is unavailable, the rest serve
                log.error("model %s failed to load: %s: %s", name, type(error).__name__, error)
                self.failed[name] = f"{type(error).__name__}: {error}"
            else:
                self.served.append(name)
