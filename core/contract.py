"""The request and result contract between the API and the workers. Pydantic only, no torch.

The API validates a request into :class:`JobSpec`, stores it with the decoded pixels, and a worker
turns it into a :class:`JobResult`. The worker trusts a stored spec: it was validated at the edge.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import ErrorCode
from core.methods import METHODS, MethodCall
from core.quality import DEFAULT_QUALITY, QualityName, QualityOptions, score_description

OutputForm = Literal["raw", "heatmap", "overlay"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TopK(_Model):
    top_k: int = Field(ge=1, description="Explain the k most probable classes of each image.")


class RenderOptions(_Model):
    colormap: Literal["inferno", "viridis", "gray", "coolwarm"] | None = Field(
        None, description="Default: inferno, or the diverging coolwarm for polarity 'both'."
    )
    polarity: Literal["absolute", "positive", "negative", "both"] = Field(
        "absolute", description="Which part of a signed map to show; 'both': signed, 0 at the colormap's middle."
    )
    clip_percentile: float = Field(99.5, gt=0, le=100, description="Values above this percentile saturate.")
    clip_lower_percentile: float = Field(
        0.5,
        ge=0,
        lt=100,
        description="Values below this percentile are drawn at the colormap's bottom (a floor: a map with an "
        "offset, as RISE's, shows its structure). Not used with polarity 'both'.",
    )
    alpha: float = Field(0.5, ge=0, le=1, description="Opacity of the heatmap in the overlay.")
    size: Literal["photo", "input"] = Field(
        "photo",
        description="A heatmap at the photo's size (the parts the network did not see marked as such), or at "
        "the network's input size.",
    )
    transparent: bool = Field(
        False, description="Heatmap as RGBA, opacity = the value's strength: for an overlay drawn by the client."
    )
    colorbar: bool = Field(False, description="A colour bar with the values at its ends beside the map.")
    scale: tuple[float, float] | None = Field(
        None,
        description="Fixed (low, high), in the map's units after the polarity, drawn at the colormap's ends instead "
        "of percentiles: one scale shared by several maps. With polarity 'both', ±max(|low|, |high|).",
    )

    @model_validator(mode="after")
    def _ordered_percentiles(self) -> RenderOptions:
        if self.clip_lower_percentile >= self.clip_percentile:
            raise ValueError("clip_lower_percentile must be below clip_percentile")
        if self.scale is not None and not self.scale[0] < self.scale[1]:
            raise ValueError("scale must be (low, high) with low < high")
        return self


class SpatialOptions(_Model):
    """How a model with spatial scores, (N, C, h, w), scores a class: the sum over all its positions, or over a
    box; with ``pointing``, TorchRay's pointing gradient (positions weighted by exp(score), normalised)."""

    box: tuple[float, float, float, float] | None = Field(
        None,
        description="(x0, y0, x1, y1) in fractions of the network's input width and height; null: every position.",
    )
    mask: str | None = Field(
        None,
        description="Instead of a box: a base64 image laid over the network's input, its grey levels (0-255) the "
        "weight of each position (TorchRay's backward gradient given as a tensor).",
    )
    pointing: bool = False

    @model_validator(mode="after")
    def _one_region(self) -> SpatialOptions:
        if self.box is not None and self.mask is not None:
            raise ValueError("give a box or a mask, not both")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError("box must be (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        return self


class ExplainOptions(_Model):
    """Everything of POST /explain but the images (those come as files or base64)."""

    model: str = Field(description="A model name from GET /models.", examples=["lenet5-shapes"])
    methods: list[MethodCall] = Field(min_length=1, max_length=len(METHODS), description="Each method at most once.")
    targets: list[int | list[int]] | TopK | None = Field(
        None,
        description="Per image, a class id or a list of class ids; or {'top_k': k} of the prediction. "
        "Default: the predicted class.",
    )
    outputs: list[OutputForm] = Field(["heatmap"], min_length=1, description="Forms of each map in the result.")
    render: RenderOptions = RenderOptions()
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seed of the stochastic methods.")
    spatial: SpatialOptions | None = Field(
        None, description="Models with spatial scores only (GET /models/{name}): a region of the output to explain."
    )
    quality: list[QualityName] = Field(
        default_factory=lambda: list(DEFAULT_QUALITY),
        max_length=len(QualityName.__args__),
        description="Scores of each map returned with it (GET /quality): "
        + score_description()
        + ". Default: the two free ones; deletion_auc, insertion_auc and confidence_change cost forward passes "
        "(quality_options.steps).",
    )
    quality_options: QualityOptions = QualityOptions()


class ExplainJSON(ExplainOptions):
    images: list[str] = Field(min_length=1, description="Base64-encoded image files (PNG, JPEG, ...).")


class PredictOptions(_Model):
    """Everything of POST /predict but the images."""

    model: str = Field(examples=["lenet5-shapes"])
    top_k: int = Field(5, ge=1, le=1000, description="Classes listed per image (at least 5).")


class PredictJSON(PredictOptions):
    images: list[str] = Field(min_length=1, description="Base64-encoded image files.")


class JobSpec(_Model):
    """What a worker runs: validated options, targets resolved per image where explicit."""

    job_id: str
    model: str
    methods: list[MethodCall]
    targets: list[list[int]] | None = Field(None, description="Explicit class ids per image, or None.")
    top_k: int = 1
    outputs: list[OutputForm]
    render: RenderOptions
    seed: int | None = None
    spatial: SpatialOptions | None = None
    quality: list[QualityName] = []
    quality_options: QualityOptions = QualityOptions()
    image_count: int
    image_sizes: list[tuple[int, int]] = Field(description="(width, height) of each decoded image (RGB pixels).")

    def batch_key(self) -> str:
        """Jobs with the same key can share one pass per method: same model, methods, parameters, seed,
        spatial options and quality scores (the API groups their messages, the worker their passes)."""
        calls = ",".join(call.model_dump_json() for call in self.methods)
        spatial = "" if self.spatial is None else self.spatial.model_dump_json()
        quality = f"{self.quality}|{self.quality_options.model_dump_json()}" if self.quality else ""
        return f"{self.model}|{self.seed}|{calls}|{spatial}|{quality}"


class Prediction(_Model):
    class_id: int
    label: str
    probability: float


class RawMap(_Model):
    dtype: Literal["float16"] = "float16"
    shape: list[int] = Field(min_length=2, max_length=2, description="(height, width)")
    data: str = Field(description="Base64 of the little-endian float16 values, row-major.")


class MapResult(_Model):
    method: str
    target: int
    label: str
    raw: RawMap | None = None
    heatmap_url: str | None = None
    overlay_url: str | None = None
    masks_used: int | None = Field(None, description="RISE / RISEPlus: the masks this map averages.")
    quality: dict[str, float] = Field(
        default_factory=dict, description="The scores the request asked for (GET /quality): " + score_description()
    )


class ImageResult(_Model):
    index: int
    predictions: list[Prediction]
    ood_score: float | None = Field(None, description="Higher is more in-distribution; null without an OoD head.")
    maps: list[MapResult]


class JobResult(_Model):
    model: str
    images: list[ImageResult]


class Predictions(_Model):
    model: str
    images: list[ImageResult]


class ErrorInfo(_Model):
    code: ErrorCode
    message: str
    field: str | None = None


class JobView(_Model):
    job_id: str
    state: JobState
    progress: float = Field(ge=0, le=1)
    model: str
    methods: list[str]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    timings_ms: dict[str, float] = {}
    attempts: int = Field(0, ge=0, description="Times a worker started the job (more than 1 after a worker was lost).")
    result: JobResult | None = None
    error: ErrorInfo | None = None
