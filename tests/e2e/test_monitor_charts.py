"""The monitor's eval-loss and gradient-norm charts and its step slider, in a real browser (trainer double)."""

from __future__ import annotations

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve, shot
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e
RICH = ("gradient_clipping = 1.0\neval_every_n_steps = 5\n"
        "eval_datasets = [{name = 'held', config = 'ds.toml'}, {name = 'faces', config = 'ds.toml'}]\n")


@pytest.fixture
def finished_runs(tmp_path):
    """A plain run (no evals, no gradient norms) and a newer one with both, both finished."""
    manager = RunManager([tmp_path / "plain" / "out", tmp_path / "rich" / "out"], trainer_module="tests.fakes.trainer")
    ids = []
    for name, steps, extra in (("plain", 10, ""), ("rich", 30, RICH)):
        ids.append(manager.start(write_pair(tmp_path / name, max_steps=steps, extra_main=extra), name=name))
        list(manager.events(ids[-1]))
    blocks, url = serve(Services(manager=manager, demo_main=tmp_path / "plain" / "main.toml",
                                 allowed_roots=[tmp_path]))
    yield url, manager, ids
    blocks.close()


def _plot_traces(page, elem_id: str) -> str:
    return f"(document.querySelector('#{elem_id} .js-plotly-plot')?.data ?? []).length"


def _label_says(page, text: str) -> None:
    page.wait_for_function(f"(document.querySelector('#monitor-samples')?.innerText ?? '').includes({text!r})")


def test_eval_and_grad_charts_and_the_step_slider(page, finished_runs):
    url, manager, (plain, rich) = finished_runs
    page.goto(url)
    page.get_by_role("tab", name="Live monitor").click()
    # The newest run is attached on load: both extra charts appear with their data.
    page.wait_for_function(f"{_plot_traces(page, 'monitor-eval')} == 8")  # 2 sets x (mean + 3 quantiles)
    page.wait_for_function(
        "document.querySelector('#monitor-grad .js-plotly-plot')?._fullData?.[0]?.x?.length == 30")
    names = page.evaluate("document.querySelector('#monitor-eval .js-plotly-plot').data.map(t => t.name)")
    assert "held loss" in names and "faces loss" in names
    assert "samples/s" in page.locator("#dp-status").inner_text()
    _label_says(page, "all 6 sampled steps")
    assert page.locator("#monitor-samples img").count() >= 6
    shot(page, "monitor-charts")
    # Scrub to step 12: the gallery shows the nearest sampled step (10) only.
    scrub = page.locator("#monitor-scrub input[type=number]")
    scrub.fill("12")
    scrub.press("Tab")  # the slider's number box sends its value on blur
    _label_says(page, "Samples at step 10 (2 of 6")
    page.wait_for_function("document.querySelectorAll('#monitor-samples img').length == 1")
    shot(page, "monitor-scrubbed")
    # Another run without evals or gradient norms: the charts hide and the slider starts over.
    box = page.locator("#monitor-run input").first
    box.click()
    page.locator(f'[role=option][aria-label^="{plain} "]:visible').first.click()
    page.wait_for_function("document.querySelector('#dp-status')?.innerText?.includes('step 10/10')")
    page.locator("#monitor-eval").wait_for(state="hidden")
    page.locator("#monitor-grad").wait_for(state="hidden")
    _label_says(page, "all 2 sampled steps")
    assert scrub.input_value() == "0"
