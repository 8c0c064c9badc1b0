"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with their assets served by the coordinator itself.

FastAPI's defaults load the JS/CSS from a CDN (blank pages offline); here the pages reference
only ``/docs-assets/*`` (vendored in ``cloud/api_docs_assets``, see its README for versions and
licences) and ``/openapi.json``. No Google fonts, no external favicon.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(__file__).resolve().parent.parent / "api_docs_assets"
ASSETS_URL = "/docs-assets"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="FedDST Edge coordinator - API",
                               swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
                               swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png")


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title="FedDST Edge coordinator - API",
                          redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                          redoc_favicon_url=f"{ASSETS_URL}/favicon-32x32.png", with_google_fonts=False)


def mount_api_docs(app: FastAPI) -> None:
    """Serve the vendored assets under ``/docs-assets`` (the app must be built with docs_url=None, redoc_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
