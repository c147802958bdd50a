"""Runs library in a browser: two finished runs, overlaid, diffed, their sample grid, best epoch, delete."""

from __future__ import annotations

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve, shot
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e


@pytest.fixture
def two_runs(tmp_path):
    manager = RunManager([tmp_path / "a" / "out"], trainer_module="tests.fakes.trainer")
    ids = []
    for name, steps in (("a", 12), ("b", 20)):
        main = write_pair(tmp_path / name, max_steps=steps, extra_main=f"warmup_steps = {steps}\n")
        ids.append(manager.start(main, name=f"run {name}"))
        list(manager.events(ids[-1]))
        _saved_lora(manager.run_dir(ids[-1]) / "epoch1")
    services = Services(manager=manager, demo_main=tmp_path / "a" / "main.toml", allowed_roots=[tmp_path])
    blocks, url = serve(services)
    yield url, manager, ids
    blocks.close()


def test_compare_diff_grid_best_and_delete(page, two_runs):
    url, manager, (a, b) = two_runs
    page.goto(url)
    page.get_by_role("tab", name="Runs library").click()
    page.wait_for_function(f"(() => {{ const t = (document.querySelector('#runs-table')?.innerText ?? '');"
                           f" return t.includes('{a}') && t.includes('{b}'); }})()")
    compare = page.locator("#runs-compare")
    compare.get_by_role("checkbox", name=a, exact=True).check()  # ids can be prefixes of each other
    compare.get_by_role("checkbox", name=b, exact=True).check()
    page.wait_for_function("document.querySelectorAll('#runs-overlay .scatterlayer .trace').length == 2")
    page.get_by_role("button", name="Config diff").click()
    _choose(page, "#runs-diff-a", a)
    _choose(page, "#runs-diff-b", b)
    page.wait_for_function("(document.querySelector('#runs-diff')?.innerText ?? '').includes('warmup_steps')")
    page.get_by_role("button", name="Samples: prompt × step").click()
    _choose(page, "#runs-grid-run", b)
    page.locator("#runs-grid img").wait_for()
    _choose(page, "#runs-saved", "epoch1")
    page.locator("#runs-best").click()
    page.locator("#runs-message").get_by_text("best save").wait_for()
    page.locator("#runs-layout").get_by_role("radio", name="diffusers").check()
    page.locator("#runs-export").click()
    page.locator("#runs-message").get_by_text("Exported").wait_for(timeout=60_000)
    with page.expect_download() as download:
        page.locator("#runs-download").click()
    assert download.value.suggested_filename.endswith("_epoch1_diffusers.safetensors")
    shot(page, "runs-library")
    page.get_by_role("button", name="Delete a run").click()
    page.locator("#runs-confirm textarea, #runs-confirm input").first.fill(b)
    page.locator("#runs-delete").click()
    page.locator("#runs-message").get_by_text("Deleted run").wait_for()
    assert [r.run_id for r in manager.runs()] == [a]


def _saved_lora(folder):
    """A real (tiny) Chroma LoRA in diffusion-pipe's layout: fused qkv of width 8, rank 2 x 3 parts."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir()
    rng = np.random.default_rng(0)
    key = "diffusion_model.double_blocks.0.img_attn.qkv"
    b = np.zeros((24, 6), np.float32)
    for i in range(3):
        b[8 * i:8 * i + 8, 2 * i:2 * i + 2] = rng.normal(size=(8, 2))
    save_file({f"{key}.lora_A.weight": rng.normal(size=(6, 8)).astype(np.float32), f"{key}.lora_B.weight": b},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text('{"r": 2, "lora_alpha": 2}')


def _choose(page, elem_id: str, value: str) -> None:
    """Pick ``value`` in a Gradio dropdown by clicking its option (run ids can be prefixes of each other)."""
    box = page.locator(f"{elem_id} input").first
    box.click()
    page.locator(f'[role=option][aria-label="{value}"]:visible').first.click()
    page.keyboard.press("Escape")
