"""What the routes get injected: settings, the model registry, the dispatcher (its job records and telemetry).

``async``: FastAPI runs a plain function dependency on a worker thread, a hop per dependency per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.dispatch import Dispatcher
from core.settings import Settings
from models.registry import ModelRegistry


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
DispatcherDep = Annotated[Dispatcher, Depends(_dispatcher)]
