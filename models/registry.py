"""The registry: every model the service can serve, found from manifests in model directories.

Manifests are read and validated when the registry is created. A broken one makes its model
unavailable (``broken``: the folder's name and the error naming the file and field); the others are
served. Networks are built lazily, on first use, once per process and device.
"""

from __future__ import annotations

import logging
import re
import threading
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from models.manifest import (
    NAME_PATTERN,
    Manifest,
    ManifestError,
    ModelUnavailableError,
    UnknownModelError,
    read_manifest,
)

if TYPE_CHECKING:
    from torch import nn

BUNDLED = Path(__file__).resolve().parent / "zoo"
log = logging.getLogger(__name__)


def discover(directories: Iterable[Path | str]) -> tuple[dict[str, Manifest], dict[str, str]]:
    """(manifests by name, errors of the broken ones by their folder's name). A directory is a model
    folder (it holds ``manifest.toml``) or holds them; a directory that does not exist is an error."""
    found: dict[str, Manifest] = {}
    broken: dict[str, str] = {}
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise ManifestError(f"model directory {directory} does not exist")
        paths = (
            [directory / "manifest.toml"]
            if (directory / "manifest.toml").is_file()
            else sorted(directory.glob("*/manifest.toml"))
        )
        for path in paths:
            try:
                manifest = read_manifest(path)
                if manifest.name in found:
                    raise ManifestError(
                        f"{path}: field 'name': {manifest.name!r} is also defined in {found[manifest.name].folder}"
                    )
                _check_files(path, manifest)
            except ManifestError as error:
                name = _name_of(path, found)
                log.error("model folder %s is not served: %s", path.parent, error)
                broken[name] = str(error)
            else:
                found[manifest.name] = manifest
    return found, broken


def _name_of(path: Path, taken: dict[str, Manifest]) -> str:
    """What a broken manifest's model is known by: the name it gives, if it can be read and is free,
    else its folder's name (else the folder's path)."""
    try:
        name = tomllib.loads(path.read_text(encoding="utf-8")).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        name = None
    for candidate in (name, path.parent.name):
        if isinstance(candidate, str) and re.fullmatch(NAME_PATTERN, candidate) and candidate not in taken:
            return candidate
    return str(path.parent)


def _check_files(path: Path, manifest: Manifest) -> None:
    if manifest.weights.file is not None and not manifest.path(manifest.weights.file).is_file():
        raise ManifestError(f"{path}: field 'weights.file': {manifest.path(manifest.weights.file)} does not exist")
    if manifest.ood_head is not None and not manifest.path(manifest.ood_head.file).is_file():
        raise ManifestError(f"{path}: field 'ood_head.file': {manifest.path(manifest.ood_head.file)} does not exist")


class ModelRegistry:
    def __init__(self, directories: Iterable[Path | str] = (BUNDLED,)) -> None:
        self._manifests, self.broken = discover(directories)
        self._networks: dict[tuple[str, str], nn.Module] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The models whose manifests are valid (``broken`` holds the others)."""
        return sorted(self._manifests)

    def manifest(self, name: str) -> Manifest:
        if name in self.broken:
            raise ModelUnavailableError(f"model {name!r} is unavailable: {self.broken[name]}")
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
