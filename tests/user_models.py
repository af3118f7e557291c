"""Model folders as users write them, in every format the service loads, all from lenet5-shapes's weights
(so each must classify and explain as lenet5-shapes does), and two broken ones.

- ``script-lenet``: a TorchScript archive, no code on the server;
- ``folder-lenet``: a factory in the model's folder (``net.py``, importing ``.blocks`` relatively) whose
  network returns a dict holding ``logits`` (as Hugging Face models do);
- ``safe-lenet``: the state dict in the safetensors format;
- ``tuple-lenet``: a network returning ``(features, logits)``, the manifest says ``output = 1``;
- ``sigmoid-lenet``: the same network read as multi-label (``probabilities = "sigmoid"``);
- ``fcn-shapes``: a fully-convolutional network (random weights) scoring every position, (N, 10, 5, 5)
  (``spatial_scores = true``);
- ``broken-manifest``: a manifest with a typo in a field name;
- ``broken-factory``: a factory that raises.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch

from models.loading import sha256_of
from models.registry import BUNDLED

SOURCE = BUNDLED / "lenet5-shapes"
GOOD = ("script-lenet", "folder-lenet", "safe-lenet", "tuple-lenet")  # classify as lenet5-shapes does
MULTI_LABEL = "sigmoid-lenet"
SPATIAL = "fcn-shapes"
BROKEN = ("broken-manifest", "broken-factory")

BLOCKS = """
from torch import nn


def conv_block(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 5), nn.ReLU(), nn.MaxPool2d(2)]
"""

NET = '''
from torch import nn

from .blocks import conv_block


class DictNet(nn.Module):
    """LeNet5's layers under other names; returns {"logits": ..., "features": ...}."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*conv_block(3, 6), *conv_block(6, 16))
        self.head = nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x):
        features = self.head(self.features(x).flatten(1))
        return {"features": features, "logits": self.fc(features)}


class TupleNet(DictNet):
    def forward(self, x):
        found = super().forward(x)
        return found["features"], found["logits"]


class FCN(nn.Module):
    """Scores per position: (N, num_classes, 5, 5) for 32x32 inputs."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*conv_block(3, 6), *conv_block(6, 16))
        self.score = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        return self.score(self.features(x))


def broken(num_classes: int):
    raise RuntimeError("this factory needs a GPU that is not there")
'''

RENAMED = {  # lenet5-shapes's state dict keys -> DictNet's
    "conv1": "features.0",
    "conv2": "features.3",
    "fc1": "head.0",
    "fc2": "head.2",
    "fc3": "fc",
}


def manifest(name: str, weights: str, architecture: str | None = None, extra: str = "") -> str:
    """A complete manifest for lenet5-shapes's labels and preprocessing."""
    lines = [f'name = "{name}"', 'version = "1.0"', f'description = "lenet5-shapes as {name}"']
    if architecture is not None:
        lines += [f'architecture = "{architecture}"', "architecture_args = { num_classes = 10 }"]
    lines += ['labels_file = "labels.txt"', extra, "", "[weights]", weights, ""]
    lines += [
        "[preprocessing]",
        "size = [32, 32]",
        "mean = [0.5, 0.5, 0.5]",
        "std = [0.25, 0.25, 0.25]",
        "",
    ]
    return "\n".join(lines)


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(SOURCE / "labels.txt", folder / "labels.txt")
    return folder


def _weights(folder: Path, file: str, form: str = "") -> str:
    fmt = f'format = "{form}"\n' if form else ""
    return f'{fmt}file = "{file}"\nsha256 = "{sha256_of(folder / file)}"'


def lenet_state() -> dict[str, torch.Tensor]:
    return torch.load(SOURCE / "lenet5-shapes.pt", weights_only=True)


def write_user_models(root: Path) -> Path:
    """Write every folder of this module's docstring under ``root``; returns ``root``."""
    from safetensors.torch import save_file

    from models.lenet5 import LeNet5

    state = lenet_state()
    network = LeNet5(10)
    network.load_state_dict(state)
    network.eval()

    folder = _folder(root, "script-lenet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(network).save(str(folder / "model.pt"))
    (folder / "manifest.toml").write_text(manifest("script-lenet", _weights(folder, "model.pt", "torchscript")))

    renamed = {}
    for key, value in state.items():
        layer, _, kind = key.rpartition(".")
        renamed[f"{RENAMED[layer]}.{kind}"] = value
    for name, factory in (("folder-lenet", "DictNet"), ("tuple-lenet", "TupleNet")):
        folder = _folder(root, name)
        (folder / "blocks.py").write_text(BLOCKS)
        (folder / "net.py").write_text(NET)
        torch.save(renamed, folder / "weights.pt")
        extra = 'gradcam_layer = "features.3"' + ("\noutput = 1" if name == "tuple-lenet" else "")
        text = manifest(name, _weights(folder, "weights.pt"), f"net:{factory}", extra)
        (folder / "manifest.toml").write_text(text)

    folder = _folder(root, "safe-lenet")
    save_file({key: value.contiguous() for key, value in state.items()}, str(folder / "weights.safetensors"))
    weights = _weights(folder, "weights.safetensors", "safetensors")
    extra = 'gradcam_layer = "conv2"'
    (folder / "manifest.toml").write_text(manifest("safe-lenet", weights, "models.lenet5:LeNet5", extra))

    folder = _folder(root, MULTI_LABEL)
    torch.save(state, folder / "weights.pt")
    extra = 'gradcam_layer = "conv2"\nprobabilities = "sigmoid"'
    (folder / "manifest.toml").write_text(
        manifest(MULTI_LABEL, _weights(folder, "weights.pt"), "models.lenet5:LeNet5", extra)
    )

    folder = _folder(root, SPATIAL)
    (folder / "blocks.py").write_text(BLOCKS)
    (folder / "net.py").write_text(NET)
    from models.loading import import_factory

    torch.manual_seed(0)
    torch.save(import_factory("net:FCN", folder)(num_classes=10).state_dict(), folder / "weights.pt")
    extra = 'gradcam_layer = "features.3"\nspatial_scores = true'
    (folder / "manifest.toml").write_text(manifest(SPATIAL, _weights(folder, "weights.pt"), "net:FCN", extra))

    folder = _folder(root, "broken-manifest")
    torch.save(state, folder / "weights.pt")
    text = manifest("broken-manifest", _weights(folder, "weights.pt"), "models.lenet5:LeNet5", 'gradcam_layr = "conv2"')
    (folder / "manifest.toml").write_text(text)

    folder = _folder(root, "broken-factory")
    (folder / "blocks.py").write_text(BLOCKS)
    (folder / "net.py").write_text(NET)
    torch.save(renamed, folder / "weights.pt")
    (folder / "manifest.toml").write_text(manifest("broken-factory", _weights(folder, "weights.pt"), "net:broken"))
    return root
