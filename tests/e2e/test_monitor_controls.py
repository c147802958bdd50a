"""The live monitor's controls act at once and every time while a run streams, on the run shown on screen.

A stream is a generator that lives as long as the run: controls must not be events queued behind it (Gradio
ignores a second trigger of a listener whose first call is still running). Driven with the torch-free trainer
double so runs stream for as long as the test needs.
"""

from __future__ import annotations

import time

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve, shot
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e
FAST = 3_000  # every control must show its effect within about a second; 3 s leaves room for a loaded CI box


@pytest.fixture
def two_runs(tmp_path):
    """A finished short run and a live long one (the monitor lands on the live one)."""
    main = write_pair(tmp_path / "profile")
    manager = RunManager([tmp_path / "profile" / "out"], trainer_module="tests.fakes.trainer")
    done = manager.start(main, name="short", max_steps=3, queue=False)
    deadline = time.monotonic() + 30
    while manager.info(done).live and time.monotonic() < deadline:
        time.sleep(0.1)
    live = manager.start(main, name="long", max_steps=100_000, queue=False)
    services = Services(manager=manager, demo_main=main, allowed_roots=[tmp_path])
    blocks, url = serve(services)
    yield url, manager, done, live
    if manager.info(live).live:
        manager.send(live, "stop")
    blocks.close()


def log_is(page, predicate: str, timeout=FAST):
    page.wait_for_function(f"(v => {predicate})(document.querySelector('#monitor-log textarea')?.value ?? '')",
                           timeout=timeout)


def search(page, text: str):
    box = page.locator("#monitor-search input, #monitor-search textarea").first
    box.click()
    box.press("Control+a")
    box.press_sequentially(text)  # fill() does not fire Gradio's input event
    box.press("Enter")


def pick_run(page, run_id: str):
    page.locator("#monitor-run input").click()
    page.locator("#monitor-run").get_by_role("option").filter(has_text=f"{run_id} · ").click()


def status_has(page, text: str, timeout=FAST):
    page.wait_for_function("t => (document.querySelector('#dp-status')?.innerText ?? '').includes(t)",
                           arg=text, timeout=timeout)


def test_repeated_controls_take_effect_every_time(page, two_runs):
    url, manager, done, live = two_runs
    page.goto(url)
    page.get_by_role("tab", name="Live monitor").click()
    status_has(page, live, timeout=20_000)
    log_is(page, "v.includes('phase')", timeout=20_000)
    search(page, "phase")
    log_is(page, "v.length > 0 && v.split('\\n').every(l => l.includes('phase'))")
    search(page, "no line says this")
    log_is(page, "v === ''")
    search(page, "phase")
    log_is(page, "v.includes('phase')")
    # Log level: error hides the info lines, info brings them back.
    for level, predicate in (("error", "v === ''"), ("info", "v.includes('phase')"), ("error", "v === ''")):
        page.locator("#monitor-level input").click()
        page.locator("#monitor-level").get_by_role("option", name=level, exact=True).click()
        log_is(page, predicate)
    # The run picker: each pick shows that run, and the buttons act on the run on screen.
    pick_run(page, done)
    status_has(page, done)
    status_has(page, "completed")
    page.locator("#monitor-stop").click()
    page.wait_for_function("t => (document.querySelector('#monitor-message')?.innerText ?? '').includes(t)",
                           arg=done, timeout=FAST)
    assert manager.info(live).live  # Stop acted on the run shown (finished), not on the live one
    pick_run(page, live)
    status_has(page, live)
    pick_run(page, done)
    status_has(page, done)
    page.locator("#monitor-attach").click()  # re-attach to the same run: still shown, still answering
    status_has(page, done)
    pick_run(page, live)
    status_has(page, live)
    page.locator("#monitor-stop").click()
    status_has(page, "stopped", timeout=20_000)
    shot(page, "monitor-controls")
