"""Debian's headless Chromium driven by playwright (never ``playwright install``), for the dashboard's tests and bench.

``chromium_missing()`` gives the reason to skip when ``/usr/bin/chromium`` or the playwright package is
absent (``make setup`` installs both). ``launch(playwright, profile_dir)`` starts a fresh persistent
profile with networking extras off, so the only traffic is what the page itself asks for.
``signed_in_dashboard(url, token, profile_dir)`` is a page on a coordinator's dashboard, signed in, that
records every request outside the coordinator's origin (and aborts it) and every page/console error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("FEDDST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (make setup installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


def launch(playwright: Any, profile_dir: Path, width: int = 1280, height: int = 800) -> Any:
    """A browser context on a fresh user-data dir with a ``width`` x ``height`` viewport."""
    return playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=CHROMIUM, args=ARGS, headless=True,
        viewport={"width": width, "height": height})


@dataclass
class DashboardSession:
    """A page on the dashboard at ``url``, signed in; what it did besides, for the test to assert on."""

    page: Any  # playwright Page
    url: str
    outside: list[str] = field(default_factory=list)  # requests to any other origin (aborted)
    inside: list[str] = field(default_factory=list)  # requests to the coordinator's origin
    problems: list[str] = field(default_factory=list)  # page errors and console errors


@contextmanager
def signed_in_dashboard(url: str, token: str, profile_dir: Path,
                        expected_console: tuple[str, ...] = ()) -> Iterator[DashboardSession]:
    """Chromium on ``url`` + ``/``, signed in with ``token`` through the page's own form, the runs list
    shown. Requests outside ``url``'s origin are aborted and listed; console errors starting with one
    of ``expected_console`` are not problems."""
    from playwright.sync_api import sync_playwright

    def guard(route: Any) -> None:
        target = route.request.url
        if target == url or target.startswith(url + "/"):
            session.inside.append(target)
            route.continue_()
        else:
            session.outside.append(target)
            route.abort()

    def console(msg: Any) -> None:
        if msg.type == "error" and not msg.text.startswith(expected_console):
            session.problems.append(f"console {msg.type}: {msg.text}")

    with sync_playwright() as playwright:
        context = launch(playwright, profile_dir)
        context.route("**/*", guard)
        page = context.pages[0] if context.pages else context.new_page()
        session = DashboardSession(page, url)
        page.on("pageerror", lambda exc: session.problems.append(f"page error: {exc}"))
        page.on("console", console)
        page.goto(url + "/")
        page.fill("#token", token)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#runs-table")
        try:
            yield session
        finally:
            context.close()
