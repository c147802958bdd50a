"""The runs library's config diff says when two runs' configs are identical (issue 11, item 10: an empty table
alone reads as "nothing loaded"), and expected mistakes log one line. Driven with the torch-free trainer double."""

from __future__ import annotations

import time

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve
from tests.e2e.test_runs_library import _choose
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e


@pytest.fixture
def twin_runs(tmp_path):
    """Two finished runs of one config."""
    main = write_pair(tmp_path / "profile")
    manager = RunManager([tmp_path / "profile" / "out"], trainer_module="tests.fakes.trainer")
    ids = []
    for name in ("one", "two"):
        ids.append(manager.start(main, name=name, max_steps=2, queue=False))
        deadline = time.monotonic() + 60
        while manager.info(ids[-1]).live and time.monotonic() < deadline:
            time.sleep(0.1)
    blocks, url = serve(Services(manager=manager, demo_main=main, allowed_roots=[tmp_path]))
    yield url, ids
    blocks.close()


def test_identical_configs_are_said_to_be_identical(page, twin_runs):
    url, (a, b) = twin_runs
    page.goto(url)
    page.get_by_role("tab", name="Runs library").click()
    page.get_by_role("button", name="↻ Refresh").click()
    page.get_by_role("button", name="Config diff").click()
    _choose(page, "#runs-diff-a", a)
    _choose(page, "#runs-diff-b", b)
    page.wait_for_function("(document.querySelector('#runs-diff-note')?.innerText ?? '').includes('identical')",
                           timeout=20_000)
    assert a in page.locator("#runs-diff-note").inner_text()


def test_an_expected_mistake_is_a_toast_and_one_log_line_not_a_traceback(page, twin_runs, capfd, caplog):
    """Issue 11 item 10: Resume with no run picked raised gr.Error, and Gradio printed its traceback."""
    url, _ = twin_runs
    caplog.set_level("INFO", logger="studio")
    page.goto(url)
    page.get_by_role("tab", name="Runs library").click()
    page.get_by_role("button", name="Resume training").click()
    page.locator("#runs-resume").click()
    page.get_by_text("pick a run and one of its resume points first").first.wait_for(timeout=20_000)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert [r.getMessage() for r in caplog.records if r.name == "studio"] == [
        "refused: pick a run and one of its resume points first"]
