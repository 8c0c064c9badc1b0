"""``create_app``: the FastAPI application around one :class:`~cloud.coordinator.Coordinator`.

Errors are answered in one place (:func:`install_error_handlers`): every
:class:`~cloud.errors.CoordinatorError` becomes ``{"detail": message}`` with the class's
``http_status`` (401 adds ``WWW-Authenticate: Bearer``); request validation errors and
:class:`~cloud.errors.RunConfigRejectedError` become 422 ``{"detail": [{"loc", "msg", "type"}]}``
without echoing the input (it may hold NaN, which is not JSON, or be large); a 405 lists every
method of the path in ``Allow``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from cloud import dashboard
from cloud.api import api_docs, devices, enrollments, health, metrics, run_events, runs
from cloud.api.deps import authorize, bearer_scheme, role_required_by
from cloud.coordinator import Coordinator
from cloud.errors import AuthenticationRequiredError, CoordinatorError, RunConfigRejectedError
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)

WARM_UP_PATH = "/.well-known/feddst-warm-up"  # served by no route: matching it visits every route
ROUTERS = (health.router, runs.router, run_events.router, devices.router, enrollments.router,
           metrics.router, api_docs.router, dashboard.router)  # one per resource


def create_app(settings: CloudSettings | None = None, coordinator: Coordinator | None = None) -> FastAPI:
    """The app. With ``coordinator`` given, the caller owns its lifecycle; otherwise the app starts
    one from ``settings`` (default: environment) on start-up and closes it on shutdown."""
    owned = coordinator is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            coord = Coordinator(settings or CloudSettings())
            if not coord.start():  # keeps retrying in the background; /healthz says degraded meanwhile
                log.warning("the MQTT broker %s is not reachable; serving degraded until it is (runs cannot "
                            "start meanwhile)", coord.settings.broker_url)
            app.state.coordinator = coord
        _warn_without_tokens(app.state.coordinator)
        await _build_routes_before_first_request(app)
        try:
            yield
        finally:
            if owned:
                app.state.coordinator.close()

    app = FastAPI(title="FedDST Edge coordinator", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    if not owned:
        app.state.coordinator = coordinator
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    api_docs.mount_api_docs(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """The one place domain and validation errors become HTTP responses."""

    @app.exception_handler(RunConfigRejectedError)
    async def run_config_rejected(request: Request, exc: RunConfigRejectedError) -> JSONResponse:
        detail = [{"loc": ["body", *exc.loc], "msg": exc.message, "type": "run_config_rejected"}]
        return JSONResponse({"detail": detail}, status_code=exc.http_status)

    @app.exception_handler(CoordinatorError)
    async def coordinator_error(request: Request, exc: CoordinatorError) -> JSONResponse:
        return _coordinator_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and request.method in ("POST", "PUT", "PATCH"):  # body not decodable
            return await _unreadable_body(request, f"the request body is not JSON ({exc.detail})")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette lists only the first matching route's methods
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return await _unreadable_body(request, "the request body is not valid JSON")
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method of every route whose path matches the request (the app's and our routers')."""
    routes = [*app.router.routes, *(route for router in ROUTERS for route in router.routes)]
    methods: set[str] = set()
    for route in routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _coordinator_error_response(exc: CoordinatorError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationRequiredError) else None
    return JSONResponse({"detail": str(exc)}, status_code=exc.http_status, headers=headers)


async def _unreadable_body(request: Request, message: str) -> JSONResponse:
    """FastAPI parses the body before it checks the token: check it now, so a caller without the
    right token gets 401/403 for a malformed body too; with it, a 422 on ``body``."""
    role = role_required_by(request.scope.get("route"))
    if role is not None:
        try:
            authorize(request.app.state.coordinator, await bearer_scheme(request), role)
        except CoordinatorError as exc:
            return _coordinator_error_response(exc)
    return JSONResponse({"detail": [{"loc": ["body"], "msg": message, "type": "json_invalid"}]}, status_code=422)


def _warn_without_tokens(coordinator: Coordinator) -> None:
    if coordinator.tokens.active_count() == 0:
        log.warning("no API tokens yet: every /api request is refused with 401; create one with "
                    "`feddst cloud token create --role admin --state-dir %s`", coordinator.store.state_dir)


async def _build_routes_before_first_request(app: FastAPI) -> None:
    """FastAPI builds each route's request handling state lazily, on the first request that reaches
    it in route matching (~0.1 s for this app on one core, more under load), so the first visitor
    of the dashboard used to wait for it. One in-process request to a path no route serves visits
    every route at start-up instead (answered 404, never on the network)."""
    started = time.perf_counter()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://warm-up") as client:
        await client.get(WARM_UP_PATH)
    log.debug("routes built in %.3f s", time.perf_counter() - started)
