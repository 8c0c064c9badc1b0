"""``create_app``: the FastAPI application around one :class:`~cloud.coordinator.Coordinator`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from cloud.api import devices, health, runs
from cloud.coordinator import Coordinator
from cloud.errors import BrokerUnavailableError
from cloud.settings import CloudSettings


def create_app(settings: CloudSettings | None = None, coordinator: Coordinator | None = None) -> FastAPI:
    """The app. With ``coordinator`` given, the caller owns its lifecycle; otherwise the app starts
    one from ``settings`` (default: environment) on start-up and closes it on shutdown."""
    owned = coordinator is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            coord = Coordinator(settings or CloudSettings())
            if not coord.start():
                coord.close()
                raise BrokerUnavailableError(f"cannot connect to the MQTT broker {coord.settings.broker_url}")
            app.state.coordinator = coord
        try:
            yield
        finally:
            if owned:
                app.state.coordinator.close()

    app = FastAPI(title="FedDST Edge coordinator", version="1", lifespan=lifespan)
    if not owned:
        app.state.coordinator = coordinator
    app.include_router(health.router)
    app.include_router(runs.router)
    app.include_router(devices.router)
    return app
