"""The dashboard ships inside the package and is served offline: every asset is package data (in a built
wheel too), ``/`` and ``/static/...`` serve exactly those files with a same-origin CSP, nothing else."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from coordinator_harness import make_coordinator
from fastapi.testclient import TestClient

from cloud import dashboard
from cloud.app import create_app

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "cloud" / "dashboard" / "static"
ON_DISK = sorted(p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file())


def test_importlib_resources_finds_every_asset_including_the_vendored_chart_library():
    assert sorted(dashboard.ASSETS) == ON_DISK
    assert {"index.html", "vendor/uplot/uPlot.iife.min.js", "vendor/uplot/uPlot.min.css",
            "vendor/uplot/LICENSE"} <= set(ON_DISK)
    assert "MIT License" in (dashboard.STATIC / "vendor" / "uplot" / "LICENSE").read_text()


def test_a_built_wheel_carries_the_dashboard(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("feddst_core", "datasources", "simulator", "feddst_cli", "protocol", "cloud", "edge_agent"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("feddst_edge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n[len("cloud/dashboard/static/"):] for n in names if n.startswith("cloud/dashboard/static/")) \
        == ON_DISK


@pytest.fixture
def client(mosquitto, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        with TestClient(create_app(coordinator=coordinator)) as client:
            yield client
    finally:
        coordinator.close()


def test_the_page_and_its_assets_are_served_from_the_package_with_a_same_origin_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    referenced = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert "/static/vendor/uplot/uPlot.iife.min.js" in referenced and "/static/js/main.js" in referenced
    for url in referenced:
        response = client.get(url)
        assert response.status_code == 200 and response.content == (STATIC / url[len("/static/"):]).read_bytes()
    assert client.get("/static/js/main.js").headers["content-type"].startswith("text/javascript")
    assert not re.search(r"https?://", page.text)  # no CDN, no external font


def test_every_module_import_of_the_page_resolves_to_a_shipped_file():
    for js in (STATIC / "js").glob("*.js"):
        for target in re.findall(r'from "(\./[^"]+)"', js.read_text()):
            assert (js.parent / target).is_file(), f"{js.name} imports missing {target}"
        assert not re.search(r"https?://", js.read_text()), f"{js.name} names an external URL"


def test_the_page_preloads_exactly_the_modules_main_js_imports_directly_or_not():
    index = (STATIC / "index.html").read_text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/static/js/([^"]+)">', index))
    imported = {target[2:] for js in (STATIC / "js").glob("*.js")
                for target in re.findall(r'from "(\./[^"]+)"', js.read_text())}
    assert preloaded == imported and "main.js" not in preloaded  # main.js itself is the page's script


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/__init__.py", "/static/js/nope.js",
                                  "/static/", "/static/js", "/static/vendor/uplot/../../../__init__.py"])
def test_only_shipped_files_are_served(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "import" not in response.text
