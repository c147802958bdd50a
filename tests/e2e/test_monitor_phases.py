"""Before the first loss the monitor shows the phase's own progress (issue: the demo spent minutes caching and
rendering its first previews with a still bar and a "4-9 h" ETA from a cold first step)."""

from __future__ import annotations

import re

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve, shot
from tests.e2e.test_monitor_controls import status_has
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e


@pytest.fixture
def caching_run(tmp_path):
    main = write_pair(tmp_path / "profile", extra_main="[studio]\nfake_caching_items = 150\n")
    manager = RunManager([tmp_path / "profile" / "out"], trainer_module="tests.fakes.trainer")
    run_id = manager.start(main, name="cold", max_steps=100_000, queue=False)
    blocks, url = serve(Services(manager=manager, demo_main=main, allowed_roots=[tmp_path]))
    yield url, run_id
    manager.send(run_id, "stop")
    blocks.close()


def test_caching_progress_shows_before_the_first_loss(page, caching_run):
    url, run_id = caching_run
    page.goto(url)
    page.get_by_role("tab", name="Live monitor").click()
    status_has(page, run_id, timeout=20_000)
    # Part-way through caching: the bar says how many of the 150 items are done, and moves.
    page.wait_for_function("() => /caching · ([1-9]|[1-9][0-9]|1[0-4][0-9])\\/150/.test("
                           "document.querySelector('#monitor-progress')?.innerText ?? '')", timeout=20_000)
    first = int(re.search(r"(\d+)/150", page.locator("#monitor-progress").inner_text()).group(1))
    shot(page, "monitor-caching-progress")
    page.wait_for_function("n => { const m = /(\\d+)\\/150/.exec(document.querySelector('#monitor-progress')"
                           "?.innerText ?? ''); return m && Number(m[1]) > n; }", arg=first, timeout=20_000)
    width = page.locator("#monitor-progress .dp-fill").evaluate("e => e.style.width")
    assert width != "0.0%" and width != "100.0%"
    # Then training: the bar is the steps' again.
    page.wait_for_function("() => /steps/.test(document.querySelector('#monitor-progress')?.innerText ?? '')",
                           timeout=30_000)
