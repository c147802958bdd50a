"""The monitor's plumbing in a real browser, with the torch-free trainer double (fast, deterministic)."""

from __future__ import annotations

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve, shot
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e


@pytest.fixture
def fake_studio(tmp_path):
    main = write_pair(tmp_path / "profile", max_steps=100000)
    manager = RunManager([tmp_path / "profile" / "out"], trainer_module="tests.fakes.trainer")
    (tmp_path / "profile" / "data" / "a.png").write_bytes(b"")
    services = Services(manager=manager, demo_main=main, allowed_roots=[tmp_path])
    services_dataset = tmp_path / "profile" / "data"
    blocks, url = serve(services)
    yield url, manager, services_dataset
    blocks.close()


def test_start_watch_stop_and_reattach(page, fake_studio):
    url, manager, _ = fake_studio
    page.goto(url)
    page.get_by_role("button", name="▶ Start demo").click()
    page.locator("#monitor-loss .js-plotly-plot").wait_for()
    page.locator("#monitor-samples img").first.wait_for()
    page.wait_for_function("(document.querySelector('#dp-status')?.innerText ?? '').includes('step')")
    shot(page, "plumbing-running")
    # Reload mid-run: the monitor re-attaches to the live run with its whole history.
    page.reload()
    page.get_by_role("tab", name="Live monitor").click()
    page.locator("#monitor-samples img").first.wait_for()
    page.locator("#monitor-stop").click()
    page.wait_for_function("(document.querySelector('#dp-status')?.innerText ?? '').includes('stopped')", timeout=20_000)
    shot(page, "plumbing-stopped")
    run = manager.runs()[0]
    assert run.status == "stopped"


def test_sample_now_save_now_and_log_search(page, fake_studio):
    url, manager, _ = fake_studio
    page.goto(url)
    page.get_by_role("button", name="▶ Start demo").click()
    page.locator("#monitor-lr .js-plotly-plot").wait_for()
    page.wait_for_function("(document.querySelector('#monitor-progress')?.innerText ?? '').includes('steps')")
    page.locator("#monitor-save").click()
    page.wait_for_function("(document.querySelector('#monitor-message')?.innerText ?? '').includes('Save requested')")
    page.locator("#monitor-log textarea").wait_for()
    page.wait_for_function(
        "(document.querySelector('#monitor-log textarea')?.value ?? '').includes('saved lora to step')")
    search = page.locator("#monitor-search input, #monitor-search textarea").first
    search.click()
    search.press_sequentially("saved lora")  # fill() does not fire Gradio's input event
    search.press("Enter")
    page.wait_for_function(
        "(() => { const v = (document.querySelector('#monitor-log textarea')?.value ?? '');"
        " return v.length > 0 && !v.includes('phase:') && v.includes('saved lora'); })()", timeout=60_000)
    page.wait_for_function("(document.querySelector('#monitor-resources')?.innerText ?? '').includes('RAM')")
    shot(page, "plumbing-search")
    page.locator("#monitor-stop").click()
    page.wait_for_function("(document.querySelector('#dp-status')?.innerText ?? '').includes('stopped')", timeout=20_000)
