"""Runs library in a browser, on two finished REAL demo runs (the embedded Chroma demo, a few steps each):
overlaid curves, config diff, prompt × step grid, the same prompt and seed across runs, sidecar sampling of a
saved epoch, the resume picker, export + download, best save, delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomlkit
from safetensors import safe_open

from studio import runs_view
from studio.services import Services
from tests.e2e.conftest import serve, shot
from trainers.demo_profile import prepare_demo
from trainers.events import load_all
from trainers.runs import RunManager

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
STEPS = 8  # 6 steps per epoch: epoch1 is saved at step 6, step8 at the end; previews at steps 0, 4 and 8


def _demo_pair(folder, out, warmup: int):
    main = prepare_demo(folder, out)
    doc = tomlkit.parse(main.read_text(encoding="utf-8"))
    doc["warmup_steps"] = warmup
    doc["save_every_n_epochs"] = 1
    doc["studio"]["sample_every_n_steps"] = 4
    main.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return main


@pytest.fixture
def two_runs(tmp_path):
    manager = RunManager([tmp_path / "out"])
    ids = [manager.start(_demo_pair(tmp_path / name, tmp_path / "out", warmup), name=f"demo {name}", max_steps=STEPS)
           for name, warmup in (("a", 2), ("b", 4))]  # b waits in the queue until a is done
    for run_id in ids:
        events = list(manager.events(run_id))
        assert events[-1].kind == "finished", events[-1]
    services = Services(manager=manager, demo_main=tmp_path / "a" / "chroma_demo.toml", allowed_roots=[tmp_path])
    blocks, url = serve(services)
    yield url, manager, ids
    for run in manager.runs():  # never leave a detached trainer behind
        if run.live:
            manager.kill(run.run_id)
    blocks.close()


def _width(elem_id: str, width: int) -> str:
    return f"document.querySelector('#{elem_id} img')?.naturalWidth == {width}"


def _columns(n: int) -> int:
    return runs_view.LABEL_W + n * runs_view.CELL


def test_two_real_runs_compared_sampled_resumable_and_exported(page, two_runs, tmp_path):
    url, manager, (a, b) = two_runs
    page.goto(url)
    page.get_by_role("tab", name="Runs library").click()
    page.wait_for_function(f"(() => {{ const t = (document.querySelector('#runs-table')?.innerText ?? '');"
                           f" return t.includes('{a}') && t.includes('{b}'); }})()")
    compare = page.locator("#runs-compare")
    compare.get_by_role("checkbox", name=a, exact=True).check()  # ids can be prefixes of each other
    compare.get_by_role("checkbox", name=b, exact=True).check()
    page.wait_for_function("document.querySelectorAll('#runs-overlay .scatterlayer .trace').length == 2")
    # The same prompt and seed across both runs: one row per run, one column per sampled step (0, 4, 8).
    page.wait_for_function("(document.querySelector('#runs-cross-pair input')?.value ?? '').includes('in 2 of 2')")
    page.wait_for_function(_width("runs-cross-grid", _columns(3)))
    page.get_by_role("button", name="Config diff").click()
    _choose(page, "#runs-diff-a", a)
    _choose(page, "#runs-diff-b", b)
    page.wait_for_function("(document.querySelector('#runs-diff')?.innerText ?? '').includes('warmup_steps')")
    shot(page, "runs-compare")

    page.get_by_role("button", name="Samples: prompt × step").click()
    _choose(page, "#runs-grid-run", b)
    page.wait_for_function(_width("runs-grid", _columns(3)))
    # Sidecar: render the run's prompts with the LoRA saved at epoch 1 (step 6): a fourth column appears.
    _choose(page, "#runs-saved", "epoch1")
    page.locator("#runs-render").click()
    page.locator("#runs-render-progress").get_by_text("Rendered samples").wait_for(timeout=180_000)
    page.wait_for_function(_width("runs-grid", _columns(4)))
    sidecar = [ev for ev in load_all(manager.run_dir(b)) if ev.kind == "sample" and ev.source == "sidecar"]
    assert [(ev.path, ev.step) for ev in sidecar] == [("samples/epoch1_p0_s7.png", 6), ("samples/epoch1_p1_s7.png", 6)]
    shot(page, "runs-grid-sidecar")

    page.locator("#runs-best").click()
    page.locator("#runs-message").get_by_text("best save").wait_for()
    page.locator("#runs-layout").get_by_role("radio", name="diffusers").check()
    page.locator("#runs-export").click()
    page.locator("#runs-export-message").get_by_text("Exported").wait_for(timeout=120_000)
    # The exported file is checked against the run's base model: every key fits, every block Linear covered.
    assert "Key check: ✓ every key fits" in page.locator("#runs-export-message").inner_text()
    # The message sits beside the export button, not at the top of the page (issue 11 item 9).
    gap = page.evaluate("""() => document.querySelector('#runs-export-message').getBoundingClientRect().top
                                 - document.querySelector('#runs-export').getBoundingClientRect().bottom""")
    assert 0 <= gap < 200, gap
    assert "diffusers layout" in page.locator("#runs-check-report").inner_text()
    with page.expect_download() as download:
        page.locator("#runs-download").click()
    assert download.value.suggested_filename.endswith("_epoch1_diffusers.safetensors")
    saved = tmp_path / "download.safetensors"
    download.value.save_as(saved)
    with safe_open(str(saved), framework="np") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith("transformer.") for k in keys)

    # The ComfyUI workflow of that epoch: an API-format graph that loads the exported ComfyUI-layout LoRA.
    page.locator("#runs-workflow").click()
    page.locator("#runs-export-message").get_by_text("Wrote the ComfyUI workflow").wait_for(timeout=120_000)
    with page.expect_download() as download:
        page.locator("#runs-workflow-download").click()
    assert download.value.suggested_filename.endswith("_epoch1_comfyui.workflow.json")
    graph = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    loras = [n for n in graph.values() if n["class_type"] == "LoraLoaderModelOnly"]
    assert len(loras) == 1 and loras[0]["inputs"]["lora_name"].endswith("_epoch1_comfyui.safetensors")
    assert any(n["class_type"] == "KSampler" for n in graph.values())

    # Resume picker: both kinds are labelled; a LoRA-only point starts a new run and the monitor follows it.
    page.get_by_role("button", name="Resume training").click()
    page.locator("#runs-resume-point input").first.click()
    options = page.locator("[role=option]:visible")
    options.first.wait_for()
    labels = options.all_inner_texts()
    assert any(t.startswith("[LoRA only] epoch1") for t in labels), labels
    page.locator('[role=option][aria-label^="[LoRA only] epoch1"]:visible').first.click()
    page.locator("#runs-resume").click()
    page.wait_for_function("(document.querySelector('#dp-status')?.innerText ?? '').includes('(from epoch1)') ||"
                           " (document.querySelector('#monitor-run input')?.value ?? '').includes('(from epoch1)')")
    resumed = [r for r in manager.runs() if r.name.endswith("(from epoch1)")]
    assert len(resumed) == 1 and resumed[0].run_id not in (a, b)
    shot(page, "runs-resumed")
    manager.kill(resumed[0].run_id)  # it would train on; only the hand-over matters here

    page.get_by_role("tab", name="Runs library").click()
    page.get_by_role("button", name="Delete a run").click()
    _choose(page, "#runs-grid-run", a)
    page.locator("#runs-confirm textarea, #runs-confirm input").first.fill(a)
    page.locator("#runs-delete").click()
    page.locator("#runs-message").get_by_text("Deleted run").wait_for()
    assert a not in [r.run_id for r in manager.runs()]


def _choose(page, elem_id: str, value: str) -> None:
    """Pick ``value`` in a Gradio dropdown by clicking its option (run ids can be prefixes of each other)."""
    box = page.locator(f"{elem_id} input").first
    box.click()
    page.locator(f'[role=option][aria-label="{value}"]:visible').first.click()
    page.keyboard.press("Escape")
