"""What a loaded model can do: the methods that run on it and the layers each layer method may use.

A worker finds this out when it loads the model (``workers/model_host.py``) and publishes it; the API
checks requests against it and shows it in ``GET /models/{name}``. No torch here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core.errors import ErrorCode, ServiceError


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

    def refuse_unavailable(self, method: str, model: str, index: int) -> None:
        """ServiceError ``method_unavailable`` naming ``methods[index].name`` when the method does not run on
        the model (the API checks a request with it, the worker a job)."""
        if method in self.unavailable:
            raise ServiceError(
                ErrorCode.method_unavailable,
                f"method {method!r} does not run on model {model!r}: {self.unavailable[method]}",
                f"methods[{index}].name",
            )
