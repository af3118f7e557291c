"""GET /jobs/{id}, DELETE /jobs/{id}, and the rendered maps of a finished job."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from app.auth import CallerDep
from app.deps import DispatcherDep, RegistryDep, SettingsDep
from app.routes.responses import CANCEL_ERRORS, ERRORS, READ_ERRORS
from core.contract import TERMINAL_STATES, JobView
from core.errors import ErrorCode, ServiceError
from core.maps import draw_map

router = APIRouter(prefix="/jobs", tags=["jobs"])
JobId = Path(pattern=r"^[0-9a-f]{32}$", description="The job_id POST /explain returned.")


def _missing(job_id: str, ttl_s: int) -> ServiceError:
    return ServiceError(
        ErrorCode.job_not_found,
        f"no job {job_id}: unknown, or expired ({ttl_s} s after it was created)",
        "job_id",
    )


@router.get("/{job_id}", response_model=JobView, operation_id="get_job", responses=READ_ERRORS)
async def read_job(dispatcher: DispatcherDep, settings: SettingsDep, owner: CallerDep, job_id: str = JobId) -> JobView:
    """The job's state, progress, timings, and its result or error."""
    view = await run_in_threadpool(dispatcher.records.view, job_id, owner)
    if view is None:
        raise _missing(job_id, settings.result_ttl_s)
    return view


@router.delete(
    "/{job_id}",
    response_model=JobView,
    status_code=202,
    operation_id="cancel_job",
    responses={409: ERRORS[422] | {"description": "The job already finished"}, **CANCEL_ERRORS},
)
async def cancel_job(
    dispatcher: DispatcherDep, settings: SettingsDep, owner: CallerDep, job_id: str = JobId
) -> JobView:
    """Cancel a queued job at once, or a running one at its next batch."""
    view = await run_in_threadpool(dispatcher.records.view, job_id, owner)
    if view is None:
        raise _missing(job_id, settings.result_ttl_s)
    if view.state in TERMINAL_STATES:
        raise ServiceError(ErrorCode.job_finished, f"job {job_id} already {view.state}", "job_id")
    after = await run_in_threadpool(dispatcher.cancel, job_id)
    if after is None:
        raise _missing(job_id, settings.result_ttl_s)
    return after


@router.get(
    "/{job_id}/maps/{image}/{method}/{target}.png",
    operation_id="get_map_png",
    response_class=Response,
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}, **READ_ERRORS},
)
async def read_map(
    dispatcher: DispatcherDep,
    registry: RegistryDep,
    settings: SettingsDep,
    owner: CallerDep,
    job_id: str = JobId,
    image: int = Path(ge=0),
    method: str = Path(pattern=r"^[a-z_]+$"),
    target: int = Path(ge=0),
    form: Literal["heatmap", "overlay"] = Query("heatmap"),
    colormap: Literal["inferno", "viridis", "gray", "coolwarm"] | None = Query(None, description="Default: the job's."),
    polarity: Literal["absolute", "positive", "negative", "both"] | None = Query(
        None, description="Default: the job's."
    ),
    clip_percentile: float | None = Query(None, gt=0, le=100, description="Default: the job's."),
    clip_lower_percentile: float | None = Query(None, ge=0, lt=100, description="Default: the job's."),
    alpha: float | None = Query(None, ge=0, le=1, description="Opacity of an overlay. Default: the job's."),
    size: Literal["photo", "input"] | None = Query(None, description="Of a heatmap. Default: the job's."),
    transparent: bool | None = Query(None, description="A heatmap as RGBA. Default: the job's."),
    colorbar: bool | None = Query(None, description="Default: the job's."),
    scale_low: float | None = Query(None, description="With scale_high: a fixed scale (one shared by maps)."),
    scale_high: float | None = Query(None, description="With scale_low: a fixed scale (one shared by maps)."),
) -> Response:
    """A map of a finished job as PNG, drawn as the job's ``render`` options say, or recoloured by these
    parameters (the job need not run again)."""
    given = {
        "colormap": colormap,
        "polarity": polarity,
        "clip_percentile": clip_percentile,
        "clip_lower_percentile": clip_lower_percentile,
        "alpha": alpha,
        "size": size,
        "transparent": transparent,
        "colorbar": colorbar,
        "scale": None if scale_low is None or scale_high is None else (scale_low, scale_high),
    }
    recolour = {key: value for key, value in given.items() if value is not None}
    name = f"{image}/{method}/{target}"
    png = await run_in_threadpool(draw_map, dispatcher.records, registry, job_id, owner, image, name, form, recolour)
    if png is None:
        view = await run_in_threadpool(dispatcher.records.view, job_id, owner)
        raise _no_map(view, job_id, settings.result_ttl_s, image, method, target, form)
    return Response(png, media_type="image/png")


def _no_map(
    view: JobView | None, job_id: str, ttl_s: int, image: int, method: str, target: int, form: str
) -> ServiceError:
    """Why a job has no such map, naming the part of the path (or the query) that does not match."""
    if view is None:
        return _missing(job_id, ttl_s)
    if view.result is None:
        return ServiceError(ErrorCode.map_not_found, f"job {job_id} is {view.state}: it has no maps", "job_id")
    if image >= len(view.result.images):
        count = len(view.result.images)
        return ServiceError(ErrorCode.map_not_found, f"job {job_id} has {count} image(s), numbered from 0", "image")
    maps = view.result.images[image].maps
    if method not in {entry.method for entry in maps}:
        return ServiceError(ErrorCode.map_not_found, f"job {job_id} ran {', '.join(view.methods)}", "method")
    targets = sorted({entry.target for entry in maps if entry.method == method})
    if target not in targets:
        message = f"image {image} of job {job_id} was explained for targets {targets}"
        return ServiceError(ErrorCode.map_not_found, message, "target")
    message = f"job {job_id} did not ask for {form} maps, or their photo has expired"
    return ServiceError(ErrorCode.map_not_found, message, "form")
