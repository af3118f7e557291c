"""GET /healthz (alive), /readyz (can run jobs), /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.auth import metrics_caller
from app.deps import DispatcherDep
from core.errors import ErrorCode, status_of

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", operation_id="readyz", responses={503: {"description": "Not ready"}})
async def readyz(dispatcher: DispatcherDep) -> JSONResponse:
    """Ready: the broker answers and a live worker has loaded a model (embedded: the pool is up and a model
    loaded). The detail says, per model, how many live workers serve it, and why a worker could not load one."""
    ready, detail = await run_in_threadpool(dispatcher.readiness)
    body: dict[str, Any] = {"ready": ready, **detail}
    if ready:
        return JSONResponse(body)
    return JSONResponse(
        body, status_code=503, headers={"Retry-After": str(status_of(ErrorCode.no_worker).retry_after_s)}
    )


@router.get(
    "/metrics", operation_id="metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}}
)
async def metrics(request: Request, _: str | None = Depends(metrics_caller)) -> Response:
    """Prometheus text format."""
    text, content_type = await run_in_threadpool(request.app.state.metrics.render)
    return Response(text, media_type=content_type)
