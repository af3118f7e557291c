"""Build a ready network from a manifest: architecture, verified weights, eval mode, warm-up.

State dicts are loaded with ``weights_only=True`` and TorchScript archives with ``torch.jit.load``:
no arbitrary object is ever unpickled. A weights file whose SHA-256 differs from the manifest's is
refused before it is opened by torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.resources
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping
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


def import_factory(spec: str, folder: Path | None = None) -> Callable[..., object]:
    """The factory ``module:attribute``. A module whose file (``module.py``, or a package) is in the
    model's ``folder`` is imported from there, as part of a package of its own per folder (so two
    folders may each hold a ``net.py``, and the folder's modules import each other relatively:
    ``from .blocks import Block``); any other module is imported from the installed packages."""
    module_name, _, attribute = spec.partition(":")
    try:
        if folder is not None and _holds_module(folder, module_name):
            module = importlib.import_module(f"{_folder_package(folder)}.{module_name}")
        else:
            module = importlib.import_module(module_name)
        factory = getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise ModelLoadError(f"architecture {spec!r} cannot be imported: {error}") from None
    except Exception as error:  # the module is user code: any failure while it runs is a load error
        raise ModelLoadError(f"architecture {spec!r}: importing its module raised {error!r}") from None
    if not callable(factory):
        raise ModelLoadError(f"architecture {spec!r} is not callable")
    return factory


def _holds_module(folder: Path, module_name: str) -> bool:
    top = folder / module_name.split(".")[0]
    return top.with_suffix(".py").is_file() or (top / "__init__.py").is_file()


def _folder_package(folder: Path) -> str:
    """A package whose path is the model's folder, created once per folder and process."""
    name = "xai_model_code_" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    if name not in sys.modules:
        spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
        package = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        package.__path__ = [str(folder.resolve())]
        sys.modules[name] = package
    return name


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
    return _warm_up(manifest, network, device)


def _from_state_dict(manifest: Manifest, path: Path) -> nn.Module:
    factory = import_factory(manifest.architecture, manifest.folder)  # type: ignore[arg-type]
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
        if manifest.weights.format == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as error:  # unpickling refused, wrong keys or shapes
        raise WeightsError(
            f"model {manifest.name!r}: {path} does not load into {manifest.architecture!r}: {error}"
        ) from None
    return network


def _warm_up(manifest: Manifest, network: nn.Module, device: str | torch.device) -> nn.Module:
    """One forward pass on zeros: checks the input size and the outputs, warms the caches. A network
    whose class scores are inside what it returns (a dict, an object with ``logits``, a tuple) comes back
    returning the scores alone (:func:`scores_only`)."""
    height, width = manifest.preprocessing.size
    blank = torch.zeros(1, 3, height, width, device=device)
    try:
        with torch.inference_mode():
            outputs = network(blank)
    except Exception as error:
        raise ModelLoadError(f"model {manifest.name!r}: a {height}x{width} RGB input fails: {error}") from None
    if not isinstance(outputs, torch.Tensor) or manifest.output is not None:
        pick_scores(outputs, manifest.output, manifest.name)  # a ModelLoadError naming the field if not found
        network = scores_only(network, manifest.output, manifest.name)
        with torch.inference_mode():
            outputs = network(blank)
    if manifest.spatial_scores:
        if outputs.dim() != 4 or outputs.shape[1] != manifest.num_classes:
            raise ModelLoadError(
                f"model {manifest.name!r}: field 'spatial_scores': outputs {tuple(outputs.shape)} are not "
                f"(1, {manifest.num_classes}, h, w) score maps of its labels"
            )
        return network  # the worker reads its class scores through workers.xai.SpatialScores
    if tuple(outputs.shape) != (1, manifest.num_classes):
        raise ModelLoadError(
            f"model {manifest.name!r}: outputs {tuple(outputs.shape)} do not match "
            f"the {manifest.num_classes} labels of its labels_file"
        )
    _first_backward(network, blank)
    return network


def _first_backward(network: nn.Module, blank: torch.Tensor) -> None:
    """The first backward pass of a process given an output gradient (as every gradient method gives one)
    imports torch's symbolic shapes, and sympy with them: ~0.3-0.4 s on a CPU, paid here at load rather than
    by the first job. A network that cannot be differentiated is not refused here: its gradient methods say
    so when asked."""
    inputs = blank.clone().requires_grad_(True)
    with contextlib.suppress(RuntimeError):
        outputs = network(inputs)
        torch.autograd.grad(outputs, inputs, grad_outputs=torch.ones_like(outputs))


def pick_scores(outputs: object, where: str | int | None, model: str) -> torch.Tensor:
    """The class scores inside a network's outputs: ``outputs[where]`` or ``outputs.where``; without
    ``where``, the tensor itself, a ``logits`` key or attribute, or the first element of a sequence."""
    if where is None:
        if isinstance(outputs, torch.Tensor):
            return outputs
        if (isinstance(outputs, Mapping) and "logits" in outputs) or hasattr(outputs, "logits"):
            where = "logits"
        elif isinstance(outputs, (tuple, list)) and outputs:
            where = 0
    found: object = None
    try:
        if isinstance(where, int) or isinstance(outputs, Mapping):
            found = outputs[where]  # type: ignore[index]
        elif where is not None:
            found = getattr(outputs, where)
    except (KeyError, IndexError, TypeError, AttributeError):
        found = None
    if not isinstance(found, torch.Tensor):
        raise ModelLoadError(f"model {model!r}: field 'output': {_describe(outputs)} holds no tensor at {where!r}")
    return found


def _describe(outputs: object) -> str:
    if isinstance(outputs, Mapping):
        return f"the network returns a dict with keys {sorted(map(str, outputs))}"
    if isinstance(outputs, (tuple, list)):
        return f"the network returns a {type(outputs).__name__} of {len(outputs)}"
    return f"the network returns {type(outputs).__name__}"


class _ScoresOf(nn.Module):
    """A TorchScript network (it takes no hooks) returning only its class scores."""

    def __init__(self, network: nn.Module, where: str | int | None, model: str) -> None:
        super().__init__()
        self.network, self.where, self.model = network, where, model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return pick_scores(self.network(inputs), self.where, self.model)


def scores_only(network: nn.Module, where: str | int | None, model: str) -> nn.Module:
    """The network made to return its class scores alone. An ``nn.Module`` keeps its identity and its
    layers' names (a forward hook replaces the output), so layer methods and OoD heads see it as before."""
    if isinstance(network, torch.jit.ScriptModule):
        return _ScoresOf(network, where, model)
    network.register_forward_hook(lambda module, args, outputs: pick_scores(outputs, where, model))
    return network
