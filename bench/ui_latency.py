"""Click-to-update latency of the page, measured in the browser (issue 11 item 11).

Method: the studio is served in-process (the browser tests' `serve`) and driven by headless Chromium through
Playwright. For each action the page records `performance.now()` at the user's input (pointerdown or keydown,
captured before Gradio sees it) and again on the first animation frame where the expected result is on screen;
the difference is the latency a user sees, with no Playwright round trips in it. Each action runs `--rounds`
times; the median, min and max are printed.

Actions: the builder's model-type change (until the TOML editor shows the new type) and Validate (until its
message changes); a rank-32 Chroma LoRA export in diffusion-pipe's layout (full size: 228 fused Linears, bf16,
214 MiB) from the runs library, ComfyUI and kohya layouts in turn (until the export message names the file); browsing 60 generated
1024x1024 JPEGs in the dataset browser (until the summary shows them); the live monitor's controls while the
torch-free trainer double streams a run (log search, log level, picking another run). Goals: under 1 s for
builder changes and validation, under 3 s for the export and the browse, about a second for the monitor's
controls.

Usage: python bench/ui_latency.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARM = """kind => { window.__t0 = null; window.__t1 = null;
  document.addEventListener(kind, () => { window.__t0 = performance.now(); }, {capture: true, once: true}); }"""


def timed(page, action, done_js: str, arg=None, timeout: float = 120_000) -> float:
    """Seconds from the input ``action`` makes to the first frame where ``done_js(arg)`` holds."""
    kind = "keydown" if getattr(action, "keyboard", False) else "pointerdown"
    page.evaluate(ARM, kind)
    action()
    page.wait_for_function(f"arg => {{ if (!({done_js})(arg)) return false; window.__t1 = window.__t1 ?? "
                           f"performance.now(); return window.__t0 !== null; }}", arg=arg, timeout=timeout,
                           polling="raf")
    return (page.evaluate("() => window.__t1 - window.__t0")) / 1000


def keyboard(fn):
    fn.keyboard = True
    return fn


def text_of(selector: str) -> str:
    return f"(document.querySelector('{selector}')?.innerText ?? '')"


def bench_builder(page, url: str, rounds: int) -> dict[str, list[float]]:
    page.goto(url)
    page.get_by_role("tab", name="Config builder").click()
    page.locator("#builder-main .cm-content").wait_for()
    out: dict[str, list[float]] = {"builder: model type change": [], "builder: Validate": []}
    for _ in range(rounds):
        for value, label in (("flux", "Flux (flux)"), ("chroma", "Chroma (chroma)")):
            page.locator("#builder-type input").fill(value)
            option = page.get_by_role("option", name=label, exact=True)
            option.wait_for()
            out["builder: model type change"].append(timed(
                page, option.click, f"t => {text_of('#builder-main .cm-content')}.includes(t)", f"type = '{value}'"))
        before = page.locator("#builder-message").inner_text()
        time.sleep(1.05)  # the message carries the time to the second
        out["builder: Validate"].append(timed(page, page.locator("#builder-validate").click,
                                              f"b => {text_of('#builder-message')} !== b", before))
    return out


def bench_export(page, url: str, run_id: str, rounds: int) -> dict[str, list[float]]:
    from tests.e2e.test_runs_library import _choose

    page.goto(url)
    page.get_by_role("tab", name="Runs library").click()
    page.wait_for_function(f"t => {text_of('#runs-table')}.includes(t)", arg=run_id)
    page.get_by_role("button", name="Samples: prompt × step").click()
    _choose(page, "#runs-grid-run", run_id)
    _choose(page, "#runs-saved", "epoch1")
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        for layout in ("comfyui", "kohya"):  # alternating: each export's message differs from the one shown
            page.locator("#runs-layout").get_by_role("radio", name=layout).check()
            out.setdefault(f"runs library: export rank-32 Chroma LoRA ({layout})", []).append(timed(
                page, page.locator("#runs-export").click,
                f"l => {{ const t = {text_of('#runs-export-message')}; return t.includes('Exported') && "
                "t.includes(l + '.safetensors'); }", layout))
    return out


def bench_browse(page, url: str, folders: list[Path], rounds: int) -> dict[str, list[float]]:
    page.goto(url)
    page.get_by_role("tab", name="Dataset browser").click()
    box = page.locator("#datasets-folder textarea, #datasets-folder input").first
    out: list[float] = []
    for _ in range(rounds):
        for folder in folders:  # alternating: each browse's summary names its folder
            box.fill(str(folder))
            out.append(timed(page, page.locator("#datasets-load").click,
                             f"f => {text_of('#datasets-summary')}.includes(f)", str(folder)))
    return {"dataset browser: browse 60 images": out}


def bench_monitor(page, url: str, live: str, done: str, rounds: int) -> dict[str, list[float]]:
    from tests.e2e.test_monitor_controls import status_has

    page.goto(url)
    page.get_by_role("tab", name="Live monitor").click()
    status_has(page, live, timeout=30_000)
    log = "(document.querySelector('#monitor-log textarea')?.value ?? '')"
    out: dict[str, list[float]] = {"monitor: log search": [], "monitor: log level": [], "monitor: pick a run": []}
    search = page.locator("#monitor-search input, #monitor-search textarea").first
    for _ in range(rounds):
        for query, check in (("phase", f"() => {log}.includes('phase')"), ("no line says this", f"() => {log} === ''")):
            search.click()
            search.press("Control+a")
            search.press_sequentially(query)
            out["monitor: log search"].append(timed(page, keyboard(lambda: search.press("Enter")), check))
        search.click()
        search.press("Control+a")
        search.press("Backspace")
        search.press("Enter")
        for level, check in (("error", f"() => {log} === ''"), ("info", f"() => {log}.includes('phase')")):
            page.locator("#monitor-level input").click()
            option = page.locator("#monitor-level").get_by_role("option", name=level, exact=True)
            out["monitor: log level"].append(timed(page, option.click, check))
        for run_id in (done, live):
            page.locator("#monitor-run input").click()
            option = page.locator("#monitor-run").get_by_role("option").filter(has_text=f"{run_id} · ")
            out["monitor: pick a run"].append(timed(page, option.click, f"r => {text_of('#dp-status')}.includes(r)",
                                                    run_id))
    return out


def _saved_lora_run(manager, main: Path) -> str:
    """A finished run of the trainer double with a full-size rank-32 Chroma LoRA saved as ``epoch1``."""
    from bench.lora_export import build

    run_id = manager.start(main, name="export", max_steps=3, queue=False)
    deadline = time.monotonic() + 60
    while manager.info(run_id).live and time.monotonic() < deadline:
        time.sleep(0.1)
    build(manager.run_dir(run_id) / "epoch1", rank=32, stacked=False)
    return run_id


def _wait_finished(manager, run_id: str) -> None:
    deadline = time.monotonic() + 60
    while manager.info(run_id).live and time.monotonic() < deadline:
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ui-latency-"))
    os.environ.setdefault("DP_STUDIO_HOME", str(tmp / "home"))
    from playwright.sync_api import sync_playwright

    from bench.dataset_report import write_photos
    from studio.services import Services
    from tests.conftest import write_pair
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, serve
    from trainers.runs import RunManager

    main_toml = write_pair(tmp / "profile")
    manager = RunManager([tmp / "profile" / "out"], trainer_module="tests.fakes.trainer")
    exported = _saved_lora_run(manager, main_toml)
    done = manager.start(main_toml, name="short", max_steps=3, queue=False)
    _wait_finished(manager, done)
    folders = [tmp / "photos_a", tmp / "photos_b"]
    for folder in folders:
        folder.mkdir()
        write_photos(folder, 60)
    blocks, url = serve(Services(manager=manager, demo_main=main_toml, allowed_roots=[tmp]))
    results: dict[str, list[float]] = {}
    live = None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            results |= bench_builder(page, url, args.rounds)
            results |= bench_export(page, url, exported, args.rounds)
            results |= bench_browse(page, url, folders, args.rounds)
            # Last: with a run live, the page lands on the monitor.
            live = manager.start(main_toml, name="long", max_steps=1_000_000, queue=False)
            results |= bench_monitor(page, url, live, done, args.rounds)
            browser.close()
    finally:
        if live:
            manager.send(live, "stop")
        blocks.close()
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {os.cpu_count()} cores")
    for name, values in results.items():
        print(f"{name:55s} median {statistics.median(values):6.2f} s  min {min(values):6.2f}  max {max(values):6.2f}"
              f"  (n={len(values)})")
    print(json.dumps({k: [round(v, 3) for v in vs] for k, vs in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
