"""``create_app``: the FastAPI application around one :class:`~cloud.coordinator.Coordinator`.

Errors are answered in one place (:func:`install_error_handlers`): every
:class:`~cloud.errors.CoordinatorError` becomes ``{"detail": message}`` with the class's
``http_status`` (401 adds ``WWW-Authenticate: Bearer``); request validation errors and
:class:`~cloud.errors.RunConfigRejectedError` become 422 ``{"detail": [{"loc", "msg", "type"}]}``
without echoing the input (it may hold NaN, which is not JSON, or be large).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cloud.api import devices, health, runs
from cloud.coordinator import Coordinator
from cloud.errors import AuthenticationRequiredError, BrokerUnavailableError, CoordinatorError, RunConfigRejectedError
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)


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
        _warn_without_tokens(app.state.coordinator)
        try:
            yield
        finally:
            if owned:
                app.state.coordinator.close()

    app = FastAPI(title="FedDST Edge coordinator", version="1", lifespan=lifespan)
    if not owned:
        app.state.coordinator = coordinator
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(runs.router)
    app.include_router(devices.router)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """The one place domain and validation errors become HTTP responses."""

    @app.exception_handler(RunConfigRejectedError)
    async def run_config_rejected(request: Request, exc: RunConfigRejectedError) -> JSONResponse:
        detail = [{"loc": ["body", *exc.loc], "msg": exc.message, "type": "run_config_rejected"}]
        return JSONResponse({"detail": detail}, status_code=exc.http_status)

    @app.exception_handler(CoordinatorError)
    async def coordinator_error(request: Request, exc: CoordinatorError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationRequiredError) else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)


def _warn_without_tokens(coordinator: Coordinator) -> None:
    if coordinator.tokens.active_count() == 0:
        log.warning("no API tokens yet: every /api request is refused with 401; create one with "
                    "`feddst cloud token create --role admin --state-dir %s`", coordinator.store.state_dir)
