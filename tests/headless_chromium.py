"""Debian's headless Chromium driven by playwright (never ``playwright install``), for the dashboard's tests and bench.

``chromium_missing()`` gives the reason to skip when ``/usr/bin/chromium`` or the playwright package is
absent (``make setup`` installs both). ``launch(playwright, profile_dir)`` starts a fresh persistent
profile with networking extras off, so the only traffic is what the page itself asks for.
"""

from __future__ import annotations

import os
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
