"""The live monitor leaves the browser's main thread free while a run streams (issue: streamed outputs kept it
busy about 25 s of every 31 s with Gradio's pending animation, so clicks waited seconds to minutes).

Measured with Chrome DevTools Protocol's ``Performance.getMetrics``: ``TaskDuration`` is the main thread's
busy time (scripts, style, layout, paint); its growth over a window, divided by the window, is the share of
the main thread the page uses. The trainer double steps 20 times a second (far faster than real training)
and writes a preview every 5 steps, so the page gets every kind of update as fast as the monitor sends them.

The page's own floor is measured the same way on a finished run in the same tab: Gradio 6.31 leaves one
status tracker's timer running at the display's frame rate on every page, streaming or not (a minimal
one-Markdown app shows it too), which costs 4-15 % of a core here depending on the machine's load. What the
monitor adds on top of that floor, while a run streams, must stay under a tenth of the main thread.
"""

from __future__ import annotations

import time

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve
from tests.e2e.test_monitor_controls import pick_run, status_has
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e
WINDOW_S = 15
GOAL = 0.10


@pytest.fixture
def runs(tmp_path):
    main = write_pair(tmp_path / "profile")
    manager = RunManager([tmp_path / "profile" / "out"], trainer_module="tests.fakes.trainer")
    done = manager.start(main, name="short", max_steps=3, queue=False)
    deadline = time.monotonic() + 30
    while manager.info(done).live and time.monotonic() < deadline:
        time.sleep(0.1)
    live = manager.start(main, name="long", max_steps=100_000, queue=False)
    blocks, url = serve(Services(manager=manager, demo_main=main, allowed_roots=[tmp_path]))
    yield url, manager, done, live
    manager.send(live, "stop")
    blocks.close()


def busy_share(page, cdp, seconds: float) -> tuple[float, str, str]:
    """(share of the main thread busy over ``seconds``, the status line before, the status line after)."""
    def busy() -> float:
        return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}["TaskDuration"]

    status = page.locator("#dp-status").inner_text()
    before, started = busy(), time.monotonic()
    time.sleep(seconds)
    return (busy() - before) / (time.monotonic() - started), status, page.locator("#dp-status").inner_text()


def test_streaming_a_run_adds_under_a_tenth_of_the_main_thread(page, runs):
    url, manager, done, live = runs
    page.goto(url)
    page.get_by_role("tab", name="Live monitor").click()
    status_has(page, live, timeout=20_000)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable", {"timeTicksFormat": "threadTicks"})
    time.sleep(3)  # past the first full draw
    streaming, first, last = busy_share(page, cdp, WINDOW_S)
    assert first != last, "the monitor did not update during the window: nothing was measured"
    pick_run(page, done)
    status_has(page, done)
    time.sleep(3)
    floor, first, last = busy_share(page, cdp, WINDOW_S)
    assert first == last  # a finished run: nothing streams
    print(f"main thread busy: {streaming:.1%} streaming, {floor:.1%} on a finished run")
    assert streaming - floor < GOAL, (f"streaming a run kept the main thread {streaming - floor:.0%} busier than the "
                                      f"page's floor ({floor:.0%}); goal < {GOAL:.0%}")
