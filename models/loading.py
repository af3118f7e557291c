"""Build a ready network from a manifest: architecture, verified weights, eval mode, warm-up.

State dicts are loaded with ``weights_only=True`` and TorchScript archives with ``torch.jit.load``:
no arbitrary object is ever unpickled. A weights file whose SHA-256 differs from the manifest's is
refused before it is opened by torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models.manifest import Manifest, ModelLoadError, WeightsError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_path(manifest: Manifest) -> Path:
    weights = manifest.weights
    if weights.file is not None:
        return manifest.path(weights.file)
    try:
        resource = importlib.resources.files(weights.package).joinpath(weights.resource)  # type: ignore[arg-type]
    except ModuleNotFoundError:
        raise WeightsError(f"model {manifest.name!r}: weights package {weights.package!r} is not installed") from None
    path = Path(str(resource))
    if not path.is_file():
        raise WeightsError(f"model {manifest.name!r}: {weights.resource!r} is not in package {weights.package!r}")
    return path


def verified_weights(manifest: Manifest) -> Path:
    path = weights_path(manifest)
    found = sha256_of(path)
    if found != manifest.weights.sha256:
        raise WeightsError(
            f"model {manifest.name!r}: weights file {path} has SHA-256 {found}, "
            f"the manifest says {manifest.weights.sha256}"
        )
    return path


def import_factory(spec: str) -> Callable[..., object]:
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelLoadError(f"architecture {spec!r} cannot be imported: {error}") from None
    if not callable(factory):
        raise ModelLoadError(f"architecture {spec!r} is not callable")
    return factory


def build_network(manifest: Manifest, device: str | torch.device = "cpu") -> nn.Module:
    path = verified_weights(manifest)
    if manifest.weights.format == "torchscript":
        try:
            with warnings.catch_warnings():  # deprecated in torch, still what users' archives are
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
                network = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as error:
            raise WeightsError(f"model {manifest.name!r}: {path} is not a TorchScript archive: {error}") from None
    else:
        network = _from_state_dict(manifest, path)
    network.eval()
    for param in network.parameters():
        param.requires_grad_(False)
    network.to(device)
    _warm_up(manifest, network, device)
    return network


def _from_state_dict(manifest: Manifest, path: Path) -> nn.Module:
    factory = import_factory(manifest.architecture)  # type: ignore[arg-type]
    try:
        network = factory(**manifest.architecture_args)
    except Exception as error:  # the factory is user code: any failure is a load error
        raise ModelLoadError(
            f"model {manifest.name!r}: architecture {manifest.architecture!r} raised {error!r}"
        ) from None
    if not isinstance(network, nn.Module):
        raise ModelLoadError(
            f"model {manifest.name!r}: architecture {manifest.architecture!r} returned "
            f"{type(network).__name__}, not a torch.nn.Module"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as error:  # unpickling refused, wrong keys or shapes
        raise WeightsError(
            f"model {manifest.name!r}: {path} does not load into {manifest.architecture!r}: {error}"
        ) from None
    return network


def _warm_up(manifest: Manifest, network: nn.Module, device: str | torch.device) -> None:
    """One forward pass on zeros: checks the input size and the number of outputs, warms the caches."""
    height, width = manifest.preprocessing.size
    try:
        with torch.inference_mode():
            outputs = network(torch.zeros(1, 3, height, width, device=device))
    except Exception as error:
        raise ModelLoadError(f"model {manifest.name!r}: a {height}x{width} RGB input fails: {error}") from None
    if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != (1, manifest.num_classes):
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ModelLoadError(
            f"model {manifest.name!r}: outputs {shape} do not match "
            f"the {manifest.num_classes} labels of its labels_file"
        )
