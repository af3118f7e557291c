"""Manifests, the registry and loading: bundled models, a user's own model, and every bad case."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from models.lenet5 import LeNet5
from models.loading import sha256_of
from models.manifest import (
    ManifestError,
    ModelLoadError,
    ModelUnavailableError,
    UnknownModelError,
    WeightsError,
)
from models.registry import BUNDLED, ModelRegistry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_the_bundled_models_are_listed(registry):
    assert registry.names() == ["efficientnet-lite0", "lenet5-shapes", "vit-shapes"]
    imagenet = registry.manifest("efficientnet-lite0")
    assert imagenet.num_classes == 1000
    assert imagenet.labels[285] == "Egyptian cat"
    assert imagenet.preprocessing.size == (224, 224)
    assert registry.manifest("lenet5-shapes").labels[:3] == ("circle", "square", "triangle")


@pytest.mark.parametrize("name", ["efficientnet-lite0", "lenet5-shapes", "vit-shapes"])
def test_a_bundled_network_is_built_once_ready_to_explain(registry, name):
    network = registry.network(name)
    assert network is registry.network(name)
    assert not network.training
    assert not any(param.requires_grad for param in network.parameters())
    height, width = registry.manifest(name).preprocessing.size
    with torch.no_grad():
        assert network(torch.zeros(2, 3, height, width)).shape == (2, registry.manifest(name).num_classes)
    registry.manifest(name).gradcam_layer and network.get_submodule(registry.manifest(name).gradcam_layer)


def test_an_unknown_model_names_the_known_ones(registry):
    with pytest.raises(
        UnknownModelError, match="unknown model 'resnet'; known models: efficientnet-lite0, lenet5-shapes"
    ):
        registry.manifest("resnet")


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A copy of lenet5-shapes, as a user would mount their own model."""
    target = tmp_path / "mine"
    shutil.copytree(BUNDLED / "lenet5-shapes", target)
    return target


def edit(folder: Path, pattern: str, replacement: str) -> None:
    path = folder / "manifest.toml"
    text, count = re.subn(pattern, replacement, path.read_text(), flags=re.M)
    assert count, f"{pattern!r} not in the manifest"
    path.write_text(text)


@pytest.mark.parametrize(
    ("pattern", "replacement", "message"),
    [
        (
            r"^\[preprocessing\]\nsize = \[32, 32\]\n",
            "[preprocessing]\n",
            r"field 'preprocessing.size': Field required",
        ),
        (r"^name = .*$", 'name = "Has Spaces"', r"field 'name': String should match pattern"),
        (r"^std = .*$", "std = [0.25, 0.0, 0.25]", r"field 'preprocessing.std'.*every std must be > 0"),
        (r"^resize = .*$", 'resize = "zoom"', r"field 'preprocessing.resize'"),
        (r"^labels_file = .*$", 'labels_file = "missing.txt"', r"field 'labels_file': cannot read"),
        (r'^file = "lenet5-shapes.pt"', 'file = "nope.pt"', r"field 'weights.file': .*nope.pt does not exist"),
        (r'^file = "lenet5-shapes.pt"', 'file = "../../etc/passwd"', r"points outside the model's folder"),
        (r'^sha256 = "[0-9a-f]+"', 'sha256 = "abc"', r"field 'weights.sha256'"),
        (r"^version = .*$", 'version = "1"\ncolour = "blue"', r"field 'colour': Extra inputs are not permitted"),
        (r"^architecture = .*\n", "", r"need 'architecture'"),
        (r"^name = .*$", "name = [", r"cannot read the manifest"),
    ],
)
def test_a_broken_manifest_makes_its_model_unavailable_naming_file_and_field(user_dir, pattern, replacement, message):
    edit(user_dir, r"^name = .*$", 'name = "mine"')
    edit(user_dir, pattern, replacement)
    registry = ModelRegistry([BUNDLED, user_dir])
    assert registry.names() == ["efficientnet-lite0", "lenet5-shapes", "vit-shapes"], "the others are served"
    assert len(registry.broken) == 1, registry.broken
    name, error = next(iter(registry.broken.items()))
    assert name == "mine", "known by the name it gives, or its folder's"
    assert re.search(message, error) and str(user_dir / "manifest.toml") in error
    with pytest.raises(ModelUnavailableError, match=message):
        registry.manifest(name)


def test_a_missing_model_directory_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        ModelRegistry([tmp_path / "nowhere"])


def test_a_second_model_of_one_name_is_unavailable(user_dir):
    registry = ModelRegistry([BUNDLED, user_dir])
    assert "'lenet5-shapes' is also defined" in registry.broken["mine"], "known by its folder's name"
    assert registry.manifest("lenet5-shapes").folder == BUNDLED / "lenet5-shapes"


def test_weights_with_the_wrong_hash_are_refused_when_loaded(user_dir):
    edit(user_dir, r'^sha256 = "[0-9a-f]+"', f'sha256 = "{"0" * 64}"')
    registry = ModelRegistry([user_dir])  # manifests are fine; the network is built lazily
    with pytest.raises(WeightsError, match=r"has SHA-256 [0-9a-f]{64}, the manifest says 0{64}"):
        registry.network("lenet5-shapes")


def set_weights(folder: Path, payload: object) -> None:
    torch.save(payload, folder / "lenet5-shapes.pt")
    edit(folder, r'^sha256 = "[0-9a-f]+"', f'sha256 = "{sha256_of(folder / "lenet5-shapes.pt")}"')


class Gadget:
    """An arbitrary object: unpickling it would run code of the file's choosing."""


def test_a_pickled_object_is_never_unpickled(user_dir):
    set_weights(user_dir, {"conv1.weight": Gadget()})
    with pytest.raises(WeightsError, match="does not load"):
        ModelRegistry([user_dir]).network("lenet5-shapes")


def test_weights_that_do_not_fit_the_architecture_are_refused(user_dir):
    set_weights(user_dir, LeNet5(num_classes=7).state_dict())
    with pytest.raises(WeightsError, match="size mismatch"):
        ModelRegistry([user_dir]).network("lenet5-shapes")


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ("no_such_module:build", "cannot be imported"),
        ("models.lenet5:NoSuchFactory", "cannot be imported"),
        ("models.shapes:CLASSES", "is not callable"),
        ("models.shapes:generate", "raised TypeError"),
        ("models.train_shapes:ZOO_FOLDER.exists", "cannot be imported|pattern"),
    ],
)
def test_an_architecture_that_cannot_be_built_is_an_error(user_dir, architecture, message):
    edit(user_dir, r"^architecture = .*$", f'architecture = "{architecture}"')
    with pytest.raises((ModelLoadError, ModelUnavailableError), match=message):
        ModelRegistry([user_dir]).network("lenet5-shapes")


def test_outputs_that_do_not_match_the_labels_are_an_error(user_dir):
    (user_dir / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(ModelLoadError, match=r"outputs \(1, 10\) do not match the 3 labels"):
        ModelRegistry([user_dir]).network("lenet5-shapes")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_torchscript_model_loads_and_agrees_with_its_source(user_dir, registry):
    source = registry.network("lenet5-shapes")
    torch.jit.script(source).save(str(user_dir / "scripted.pt"))
    edit(user_dir, r"^architecture = .*\n", "")
    edit(user_dir, r"^architecture_args = .*\n", "")
    edit(user_dir, r'^file = "lenet5-shapes.pt"', 'format = "torchscript"\nfile = "scripted.pt"')
    edit(user_dir, r'^sha256 = "[0-9a-f]+"', f'sha256 = "{sha256_of(user_dir / "scripted.pt")}"')
    scripted = ModelRegistry([user_dir]).network("lenet5-shapes")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), source(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_every_example_manifest_in_the_docs_loads(tmp_path):
    """docs/models.md shows a manifest per format; each must stay loadable as written, with weights made
    the way the docs say."""
    from safetensors.torch import save_file

    from tests.user_models import BLOCKS, NET, RENAMED, lenet_state

    examples = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert len(examples) == 4, "state dict, folder factory, safetensors, TorchScript"
    for text in examples:
        parsed = tomllib.loads(text)
        folder = tmp_path / parsed["name"]
        folder.mkdir()
        classes = parsed.get("architecture_args", {}).get("num_classes", 10)
        (folder / "labels.txt").write_text("".join(f"class {i}\n" for i in range(classes)))
        network = LeNet5(num_classes=classes)
        if classes == 10:
            network.load_state_dict(lenet_state())
        weights = folder / parsed["weights"]["file"]
        form = parsed["weights"].get("format", "state_dict")
        if form == "torchscript":
            torch.jit.script(network).save(str(weights))
        elif form == "safetensors":
            save_file(network.state_dict(), str(weights))
        elif parsed["architecture"].startswith("net:"):
            (folder / "net.py").write_text(NET)
            (folder / "blocks.py").write_text(BLOCKS)
            state = {f"{RENAMED[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}": v for k, v in lenet_state().items()}
            torch.save(state, weights)
        else:
            torch.save(network.state_dict(), weights)
        text = re.sub(r"<sha256 of [^>]+>", sha256_of(weights), text)
        (folder / "manifest.toml").write_text(text)
    registry = ModelRegistry([tmp_path])
    assert registry.broken == {}
    assert registry.names() == sorted(tomllib.loads(text)["name"] for text in examples)
    x = torch.zeros(1, 3, 32, 32)
    for name in registry.names():
        assert registry.network(name)(x).shape == (1, registry.manifest(name).num_classes), name
