"""The registry: every model the service can serve, found from manifests in model directories.

Manifests are read and validated when the registry is created (a broken one stops start-up with
an error naming the file and field). Networks are built lazily, on first use, once per process
and device.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from models.manifest import Manifest, ManifestError, UnknownModelError, read_manifest

if TYPE_CHECKING:
    from torch import nn

BUNDLED = Path(__file__).resolve().parent / "zoo"


def discover(directories: Iterable[Path | str]) -> dict[str, Manifest]:
    """Manifests by name. A directory is a model folder (it holds ``manifest.toml``) or holds them."""
    found: dict[str, Manifest] = {}
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise ManifestError(f"model directory {directory} does not exist")
        paths = (
            [directory / "manifest.toml"]
            if (directory / "manifest.toml").is_file()
            else sorted(directory.glob("*/manifest.toml"))
        )
        for path in paths:
            manifest = read_manifest(path)
            if manifest.name in found:
                raise ManifestError(
                    f"{path}: field 'name': {manifest.name!r} is also defined in {found[manifest.name].folder}"
                )
            _check_files(path, manifest)
            found[manifest.name] = manifest
    return found


def _check_files(path: Path, manifest: Manifest) -> None:
    if manifest.weights.file is not None and not manifest.path(manifest.weights.file).is_file():
        raise ManifestError(f"{path}: field 'weights.file': {manifest.path(manifest.weights.file)} does not exist")
    if manifest.ood_head is not None and not manifest.path(manifest.ood_head.file).is_file():
        raise ManifestError(f"{path}: field 'ood_head.file': {manifest.path(manifest.ood_head.file)} does not exist")


class ModelRegistry:
    def __init__(self, directories: Iterable[Path | str] = (BUNDLED,)) -> None:
        self._manifests = discover(directories)
        self._networks: dict[tuple[str, str], nn.Module] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self._manifests)

    def manifest(self, name: str) -> Manifest:
        try:
            return self._manifests[name]
        except KeyError:
            raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(self.names())}") from None

    def network(self, name: str, device: str = "cpu") -> nn.Module:
        """The model's network in eval mode with frozen parameters, built once per device."""
        manifest = self.manifest(name)
        key = (name, str(device))
        with self._lock:
            if key not in self._networks:
                from models.loading import build_network

                self._networks[key] = build_network(manifest, device)
            return self._networks[key]
