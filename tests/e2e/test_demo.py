"""The walking skeleton's promise, in a real browser: start the embedded Chroma demo, watch it learn, stop it.

This trains the real tiny model with the native trainer (a detached child process).
"""

from __future__ import annotations

import pytest

import app
from tests.e2e.conftest import serve, shot

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def demo_studio(studio_home):
    _, services = app.build()  # prepares the demo profile under the test's studio home, as `make studio` does
    blocks, url = serve(services)
    yield url, services
    for run in services.manager.runs():  # never leave a detached trainer behind
        if run.live:
            services.manager.kill(run.run_id)
    blocks.close()


def test_demo_trains_live_and_stops(page, demo_studio):
    url, services = demo_studio
    page.goto(url)
    page.get_by_role("button", name="▶ Start demo").click()
    page.locator("#monitor-loss .js-plotly-plot").wait_for()
    # Loss points arrive live (a line with at least three points), and the first sample previews show up.
    page.wait_for_function(
        "(() => { const p = document.querySelector('#monitor-loss .js-plotly-plot');"
        " return p && p._fullData && p._fullData[0] && p._fullData[0].x.length >= 3; })()", timeout=240_000)
    page.locator("#monitor-samples img").first.wait_for(timeout=120_000)
    shot(page, "demo-training")
    page.locator("#monitor-stop").click()
    page.wait_for_function("(document.querySelector('#dp-status')?.innerText ?? '').includes('stopped')", timeout=120_000)
    shot(page, "demo-stopped")
    run = services.manager.runs()[0]
    assert run.status == "stopped"
    saved = [p for p in run.run_dir.iterdir() if p.name.startswith(("epoch", "step"))]
    assert any((p / "adapter_model.safetensors").is_file() for p in saved), "Stop must save the LoRA"
