"""The dashboard: a static single page (HTML, CSS, JS, vendored uPlot) served by the coordinator at ``/``.

Every asset ships in this package (``static/``), so the page works offline; it talks to the
coordinator only through the public ``/api`` with the bearer token the user types in (kept in the
browser's ``sessionStorage``). The page and its assets need no token (they hold no data).
``Content-Security-Policy`` restricts the page to its own origin.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath

from fastapi import APIRouter
from fastapi.responses import Response

from cloud.errors import CoordinatorError

STATIC = files(__package__) / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")


class AssetNotFoundError(CoordinatorError):
    """No dashboard asset with that path (HTTP 404)."""

    http_status = 404


def _assets(root: Traversable, prefix: str = "") -> dict[str, Traversable]:
    """Every file under ``root`` by its relative path (the only paths the asset route serves)."""
    out: dict[str, Traversable] = {}
    for entry in root.iterdir():
        if entry.is_dir():
            out.update(_assets(entry, f"{prefix}{entry.name}/"))
        elif not entry.name.startswith("."):
            out[prefix + entry.name] = entry
    return out


ASSETS = _assets(STATIC)

router = APIRouter(tags=["dashboard"], include_in_schema=False)


def _asset_response(path: str) -> Response:
    entry = ASSETS.get(path)
    if entry is None:
        raise AssetNotFoundError(f"no dashboard asset {path!r}")
    media_type = MEDIA_TYPES.get(PurePosixPath(path).suffix, "text/plain; charset=utf-8")
    return Response(entry.read_bytes(), media_type=media_type,
                    headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Cache-Control": "no-cache"})


@router.api_route("/", methods=["GET", "HEAD"])
def index() -> Response:
    """The dashboard page."""
    return _asset_response("index.html")


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
def asset(path: str) -> Response:
    """A file of the dashboard (only files shipped in the package are served)."""
    return _asset_response(path)
