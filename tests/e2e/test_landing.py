"""A page opened (or reloaded) while a run is live lands on the live monitor (issue 11, item 9); with no live
run it opens on Chroma setup. Driven with the torch-free trainer double."""

from __future__ import annotations

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e


def _selected(page, name: str) -> None:
    page.get_by_role("tab", name=name, selected=True).wait_for(timeout=20_000)


def test_a_reload_mid_run_lands_on_the_monitor(page, tmp_path):
    main = write_pair(tmp_path / "profile")
    manager = RunManager([tmp_path / "profile" / "out"], trainer_module="tests.fakes.trainer")
    blocks, url = serve(Services(manager=manager, demo_main=main, allowed_roots=[tmp_path]))
    try:
        page.goto(url)
        _selected(page, "Chroma setup")
        live = manager.start(main, name="long", max_steps=100_000, queue=False)
        page.reload()
        _selected(page, "Live monitor")
        page.locator("#monitor-run input").first.wait_for()
        page.wait_for_function("(id) => (document.querySelector('#monitor-run input')?.value ?? '').includes(id)",
                               arg=live)
    finally:
        for run in manager.runs():  # never leave a trainer behind
            if run.live:
                manager.send(run.run_id, "stop")
        blocks.close()
