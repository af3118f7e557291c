"""GET /healthz (alive), /readyz (can run jobs), /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.deps import DispatcherDep

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", operation_id="readyz", responses={503: {"description": "Not ready"}})
async def readyz(dispatcher: DispatcherDep) -> JSONResponse:
    """Ready: the broker answers and a worker sent a heartbeat recently (or the embedded pool is up)."""
    ready, detail = await run_in_threadpool(dispatcher.readiness)
    body: dict[str, Any] = {"ready": ready, **detail}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics", operation_id="metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}}
)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    text, content_type = await run_in_threadpool(request.app.state.metrics.render)
    return Response(text, media_type=content_type)
