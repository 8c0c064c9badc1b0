"""``CoordinatorClient``: the REST API of a running coordinator, for the ``feddst cloud runs|devices`` commands.

One ``httpx.Client`` with the bearer token; every non-2xx answer and every transport failure
becomes an :class:`ApiError` whose ``str`` is one line: the HTTP status and the API's ``detail``
(422 validation lists are flattened to ``field.path: message; ...``). Also the shared option
types (``--url``/``FEDDST_API_URL``, ``--token``/``FEDDST_API_TOKEN``, ``--json``), :func:`call_api`
(a client for one command, API errors as one line and exit 1) and a plain text table formatter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from durable_files import write_file_durably

if TYPE_CHECKING:  # imported by the client itself: `feddst agent run` loads this module but never calls the API
    import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
T = TypeVar("T")

UrlOption = Annotated[str, typer.Option("--url", envvar="FEDDST_API_URL",
                                        help="Coordinator REST API base URL. Env: FEDDST_API_URL.")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", envvar="FEDDST_API_TOKEN", show_default=False,
    help="API token (`feddst cloud token create`); prefer the env var FEDDST_API_TOKEN (flags show up in ps).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


class ApiError(Exception):
    """A failed API call: ``status`` (None when the coordinator could not be reached) and one-line ``detail``."""

    def __init__(self, status: int | None, detail: str):
        super().__init__(f"HTTP {status}: {detail}" if status is not None else detail)
        self.status = status
        self.detail = detail


def error_detail(response: httpx.Response) -> str:
    """The ``detail`` of an error body as one line (FastAPI 422 lists flattened), else the raw text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", []) if p != "body"]
            parts.append(f"{'.'.join(loc) or 'body'}: {item.get('msg', '')}")
        return "; ".join(parts)
    return str(detail)


class CoordinatorClient:
    """Thin calls over the coordinator's ``/api``; each returns the decoded JSON (or bytes for the model)."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(None, f"cannot reach the coordinator at {self.url} ({type(exc).__name__}: {exc}); "
                                 "check --url / FEDDST_API_URL") from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, error_detail(response))
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None).json()

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body).json()

    def delete(self, path: str) -> None:
        self.request("DELETE", path)


def fail(error: ApiError) -> typer.Exit:
    """Print the error as one line on stderr; the caller raises the returned exit (code 1)."""
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def call_api(url: str, token: str | None, calls: Callable[[CoordinatorClient], T], timeout_s: float = 30.0) -> T:
    """Run ``calls`` with a client on ``url`` and return what it returns; an :class:`ApiError` on the way
    prints its one line on stderr and exits 1 (``typer.Exit``). Every ``feddst cloud runs|devices``
    command goes through here."""
    try:
        with CoordinatorClient(url, token, timeout_s=timeout_s) as client:
            return calls(client)
    except ApiError as exc:
        raise fail(exc) from exc


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; ``None`` prints as ``-``."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def megabytes(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 1e6:.3f} MB"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it holds the old content or the new, never a half-written file
    (``durable_files.write_file_durably``: temporary file, fsync, rename, fsync of the directory)."""
    write_file_durably(path, data)
