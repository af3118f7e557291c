"""Build the FastAPI application. Importing this module imports no torch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from app import access_log, errors
from app.auth import Keys
from app.dispatch import Dispatcher, make_dispatcher
from app.metrics import Metrics, RequestMetrics
from app.origins import OriginCheck
from app.quotas import RateLimit
from app.routes import catalog, explain, health, jobs, page, predict
from core.contract import ExplainJSON, ExplainOptions, PredictJSON, PredictOptions
from core.settings import Settings, get_settings
from models.registry import ModelRegistry

DESCRIPTION = """Classify images with PyTorch models and explain each decision with saliency maps.

`POST /explain` queues a job and answers 202 with its id (or 200 with the result, given `?wait=`);
`GET /jobs/{id}` reports its progress and result. Errors are `{"error": {"code", "message", "field"}}`."""


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or get_settings()
    registry = ModelRegistry(settings.model_dirs)  # a broken manifest: its model unavailable, the others served

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.dispatcher = dispatcher or make_dispatcher(settings, registry)
        app.state.metrics = Metrics(app.state.dispatcher)
        try:
            yield
        finally:
            app.state.dispatcher.close()

    # /docs and /redoc with Swagger UI's and ReDoc's files served from the fastapi-offline package, not a CDN:
    # the pages work on an air-gapped cluster.
    app = FastAPIOffline(
        static_url="/static-docs",
        title="xai-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Starlette's limit, counted as the body streams: a chunked body is cut off at the limit.
        max_body_size=settings.max_request_bytes,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.keys = Keys(settings.key_hashes())
    app.state.rate_limit = RateLimit(settings)
    app.state.metrics_keys = Keys(settings.metrics_keys) if settings.metrics_keys else app.state.keys
    errors.install(app)
    access_log.install()

    app.add_middleware(RequestMetrics)
    app.add_middleware(OriginCheck, allowed=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Location", "Retry-After"],
            max_age=600,
        )

    for module in (explain, jobs, predict, catalog, health, page):
        app.include_router(module.router)
    app.mount("/web", StaticFiles(directory=page.WEB), name="web")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document, plus the body schemas the multi-content-type routes refer to."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (ExplainJSON, PredictJSON, ExplainOptions, PredictOptions):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        app.openapi_schema = document
    return app.openapi_schema
