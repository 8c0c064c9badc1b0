"""The dashboard in real headless Chromium (Debian's, through playwright) against a live run: a real uvicorn,
a real mosquitto and protocol-level fake devices. The page must never ask for anything outside the
coordinator's origin; screenshots go to the test's tmp dir. Skipped (with the reason) without chromium."""

from __future__ import annotations

import pytest
from coordinator_harness import bearer, make_coordinator, wait_until
from fake_devices import FakeDevice
from headless_chromium import chromium_missing, signed_in_dashboard
from live_server import LiveServer

from cloud.run_config import EvalConfig, RunConfig

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")

EXPECTED_4XX = "Failed to load resource: the server responded with a status of 422"  # a refused config
LAST_ROUND = "() => Number(document.querySelector('#run-view')?.dataset.lastRound ?? -1)"


@pytest.fixture
def live(mosquitto, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    devices = [FakeDevice(f"dev-{i}", mosquitto.port, index=i, delay_s=0.3).start() for i in range(3)]
    try:
        with LiveServer(coordinator) as server:
            wait_until(lambda: len(coordinator.registry.online_ids()) == 3)
            yield server, coordinator
    finally:
        for device in devices:
            device.stop()
        coordinator.close()


@pytest.fixture
def browser(live, tmp_path):
    """A page on the dashboard, signed in as an operator; the page may not ask for any other origin."""
    server, coordinator = live
    token = bearer(coordinator, "operator")["Authorization"].removeprefix("Bearer ")
    with signed_in_dashboard(server.url, token, tmp_path / "profile", (EXPECTED_4XX,)) as session:
        yield session.page, server, coordinator
    assert session.outside == [], f"the page requested other origins: {session.outside}"
    assert any(u.endswith("/static/vendor/uplot/uPlot.iife.min.js") for u in session.inside)  # the guard saw traffic
    assert session.problems == []


def test_a_live_run_from_the_runs_list_to_charts_that_grow_without_a_reload(browser, tmp_path):
    page, server, coordinator = browser
    run = coordinator.create_run(RunConfig(name="browser run", rounds=5, clients_per_round=3, local_epochs=0,
                                           round_timeout_s=20, eval=EvalConfig(clients=3, samples_per_class=10,
                                                                               eval_every=1)))
    row = page.locator(f"#runs-table tr[data-run='{run.id}']")
    row.wait_for()  # the list re-reads runs: the new run appears without a reload
    assert "created" in row.inner_text() and "0 / 5" in row.inner_text() and "feddst" in row.inner_text()
    page.evaluate("() => { window.__sameDocument = true; }")
    row.get_by_role("link", name="browser run").click()
    page.wait_for_selector("#run-view .uplot")
    assert page.evaluate(LAST_ROUND) == 0
    page.locator("#run-view button.start").click()
    page.wait_for_function(f"() => ({LAST_ROUND})() >= 1")
    first_seen = page.evaluate(LAST_ROUND)
    page.wait_for_function(f"() => ({LAST_ROUND})() === 5", timeout=45_000)
    assert first_seen < 5  # the chart was drawn while rounds were still coming
    page.locator("#run-view .badge-completed").wait_for()
    assert page.evaluate("() => window.__sameDocument") is True  # server-sent events, no reload
    stored = coordinator.store.rounds(run.id)
    assert page.locator("#timeline tbody tr").count() == 5
    last = page.locator("#timeline tbody tr[data-round='5']").inner_text()
    assert f"{stored[-1]['upload_bytes'] / 1e6:.2f} MB" in last
    contributors = page.locator("#timeline tbody tr[data-round='5'] .device-list a")
    assert contributors.all_inner_texts() == sorted(stored[-1]["upload_by_device"]) == ["dev-0", "dev-1", "dev-2"]
    assert contributors.first.get_attribute("href") == "#/devices/dev-0"
    assert f"{stored[-1]['accuracy'] * 100:.1f} %" in last
    assert page.locator("#chart-acc-round .u-legend").count() == 1
    page.screenshot(path=str(tmp_path / "run-view.png"))

    page.get_by_role("link", name="Devices").click()
    page.wait_for_selector("#devices-table tbody tr")
    rows = page.locator("#devices-table tbody tr")
    assert rows.count() == 3
    assert [rows.nth(i).get_attribute("data-status") for i in range(3)] == ["online"] * 3
    assert "5" in rows.nth(0).inner_text() and "x86_64" in rows.nth(0).inner_text()
    sort = page.locator("button[data-sort='id']")
    sort.focus()
    page.keyboard.press("Enter")  # already sorted by id ascending: Enter flips it
    assert page.locator("#devices-table tbody tr").first.get_attribute("data-device") == "dev-2"
    assert page.locator("th:has(button[data-sort='id'])").get_attribute("aria-sort") == "descending"
    drawn = page.evaluate("() => { window.__link = document.querySelector(\"tr[data-device='dev-0'] a\"); "
                          "return document.querySelector('#devices-table').dataset.rendered; }")
    page.wait_for_function(f"() => document.querySelector('#devices-table').dataset.rendered !== {drawn!r}",
                           timeout=15_000)  # the 3 s refresh redrew the table...
    assert page.evaluate("() => window.__link.isConnected && document.activeElement.dataset.sort === 'id'")
    # ...keeping the device link under the pointer and the focused sort button
    page.fill("#device-filter", "dev-1")
    page.wait_for_function("() => document.querySelectorAll('#devices-table tbody tr').length === 1")
    page.screenshot(path=str(tmp_path / "devices.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{server.url}/#/runs/{run.id}")
    page.wait_for_selector("#run-view .uplot")
    page.screenshot(path=str(tmp_path / "run-view-phone.png"), full_page=True)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"the run view scrolls sideways at phone width ({width} px)"


def test_create_start_stop_and_overlay_from_the_page(browser, tmp_path):
    page, server, coordinator = browser
    page.locator("#create summary").click()
    assert page.input_value("#f-rounds") == "200" and page.input_value("#f-algorithm") == "feddst"  # RunConfig's
    page.fill("#f-name", "made in the browser")
    page.fill("#f-eval-clients", "100000")  # an evaluation the built-in digits cannot satisfy
    page.click("#create-run button[type=submit]")
    page.locator("#create-run .error").wait_for()
    assert "Not created" in page.inner_text("#create-run .error")
    assert coordinator.list_runs() == []
    for field, value in {"f-rounds": "50", "f-clients_per_round": "3", "f-local_epochs": "0",
                         "f-eval-clients": "3", "f-eval-samples_per_class": "10"}.items():
        page.fill(f"#{field}", value)
    page.click("#create-run button[type=submit]")
    page.wait_for_selector("#runs-table tbody tr[data-run]")
    (created,) = coordinator.list_runs()
    assert created.name == "made in the browser" and created.config["rounds"] == 50
    assert created.config["eval"]["clients"] == 3 and created.config["sparsity"] == 0.8  # defaults kept
    row = page.locator(f"#runs-table tr[data-run='{created.id}']")
    row.get_by_role("button", name="Start").click()
    wait_until(lambda: coordinator.store.get_run(created.id).model_round not in (None, 0), 30, "a round")
    row.locator(".badge-running").wait_for()
    page.evaluate(f"() => {{ window.__stop = document.querySelector(\"tr[data-run='{created.id}'] button.stop\"); }}")
    rounds_cell = row.locator("td.num").first
    shown = rounds_cell.inner_text()
    page.wait_for_function(f"() => document.querySelector(\"tr[data-run='{created.id}'] td.num\").textContent "
                           f"!== {shown!r}", timeout=30_000)  # the list refreshed with new figures...
    assert page.evaluate("() => window.__stop.isConnected") is True  # ...and kept the Stop button under the pointer
    row.get_by_role("button", name="Stop").click()
    wait_until(lambda: coordinator.store.get_run(created.id).status == "stopped", 20, "the stop")
    row.locator(".badge-stopped").wait_for()
    second = coordinator.create_run(RunConfig(name="second", rounds=2, clients_per_round=3, local_epochs=0,
                                              eval=EvalConfig(clients=3, samples_per_class=10, eval_every=1)))
    coordinator.start_run(second.id)
    wait_until(lambda: coordinator.store.get_run(second.id).status == "completed", 30, "the second run")
    page.locator(f"#runs-table tr[data-run='{second.id}'] .badge-completed").wait_for()
    assert page.locator("#overlay").is_disabled()
    for run_id in (created.id, second.id):
        page.locator(f"#runs-table tr[data-run='{run_id}'] input[type=checkbox]").check()
    page.click("#overlay")
    page.wait_for_selector("#compare-view .uplot")
    assert page.locator("#compare-view .uplot").count() == 3
    assert "second" in page.inner_text("#compare-view") and "made in the browser" in page.inner_text("#compare-view")
    page.screenshot(path=str(tmp_path / "overlay.png"))
