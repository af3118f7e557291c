"""What a loaded model can do: the methods that run on it and the layers each layer method may use.

A worker finds this out when it loads the model (``workers/model_host.py``) and publishes it; the API
checks requests against it and shows it in ``GET /models/{name}``. No torch here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Capabilities(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_layer: str | None = Field(
        None, description="The layer a layer method uses when the request names none (the manifest's gradcam_layer)."
    )
    layers: dict[str, list[str]] = Field(
        default_factory=dict, description="Per layer method that runs on the model, the layers it may use."
    )
    unavailable: dict[str, str] = Field(
        default_factory=dict, description="Methods that cannot run on the model, with the reason."
    )
    forward_ms: float | None = Field(
        None,
        description="One forward pass of one image, measured by the worker when it loaded the model (median of 5).",
    )
