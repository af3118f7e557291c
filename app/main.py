"""Build the FastAPI application. Importing this module imports no torch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import errors
from app.dispatch import Dispatcher, make_dispatcher
from app.metrics import Metrics
from app.routes import catalog, explain, health, jobs, predict
from app.settings import Settings, get_settings
from models.registry import ModelRegistry

DESCRIPTION = """Classify images with PyTorch models and explain each decision with saliency maps.

`POST /explain` queues a job and answers 202 with its id (or 200 with the result, given `?wait=`);
`GET /jobs/{id}` reports its progress and result. Errors are `{"error": {"code", "message", "field"}}`."""


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or get_settings()
    registry = ModelRegistry(settings.model_dirs)  # broken manifests stop start-up here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.dispatcher = dispatcher or make_dispatcher(settings, registry)
        app.state.metrics = Metrics(app.state.dispatcher)
        try:
            yield
        finally:
            app.state.dispatcher.close()

    app = FastAPI(title="xai-service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    errors.install(app)

    @app.middleware("http")
    async def count_requests(request, call_next):
        metrics = getattr(request.app.state, "metrics", None)
        return await (metrics.middleware(request, call_next) if metrics else call_next(request))

    for module in (explain, jobs, predict, catalog, health):
        app.include_router(module.router)
    return app
