"""The Chroma wizard in a browser: check files, pick a preset, see the VRAM estimate, review, save, start."""

from __future__ import annotations

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve, shot
from tests.unit.test_wizard_view import _dataset, _models
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e


@pytest.fixture
def wizard_studio(tmp_path):
    manager = RunManager([tmp_path / "runs"], trainer_module="tests.fakes.trainer")
    services = Services(manager=manager, demo_main=write_pair(tmp_path / "demo"), allowed_roots=[tmp_path])
    blocks, url = serve(services)
    yield url, manager, tmp_path
    for run in manager.runs():
        if run.live:
            manager.send(run.run_id, "stop")
    blocks.close()


def _fill(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)


def test_wizard_checks_files_estimates_reviews_and_starts(page, wizard_studio):
    url, manager, tmp = wizard_studio
    flux, ckpt = _models(tmp)
    data = _dataset(tmp, bare=0, size=600)
    page.goto(url)
    _fill(page, "wiz-diffusers", str(flux))
    _fill(page, "wiz-transformer", str(ckpt))
    page.locator("#wiz-check-models").click()
    page.locator("#wiz-models-report").get_by_text("chroma transformer, original key layout").wait_for()
    page.locator("#wiz-next-1").click()
    _fill(page, "wiz-dataset", str(data))
    page.locator("#wiz-check-dataset").click()
    page.locator("#wiz-dataset-report").get_by_text("3 images").wait_for()
    page.locator("#wiz-next-2").click()
    page.get_by_label("Chroma E6AI 1024").check()
    page.locator("#wiz-vram").get_by_text("Estimated peak VRAM").wait_for()
    shot(page, "wizard-vram")
    assert page.locator(".toast-body, [data-testid='toast-body']").count() == 0, "no error toasts"
    page.locator("#wiz-review").click()
    page.locator("#wiz-issues").get_by_text("The config is valid").wait_for()
    assert str(ckpt) in page.locator("#wiz-main").inner_text()
    _fill(page, "wiz-profile-name", "My Chroma")
    page.locator("#wiz-launch").click()
    page.wait_for_function("(document.querySelector('#dp-status')?.innerText ?? '').includes('step')")
    shot(page, "wizard-started")
    run = manager.runs()[0]
    assert run.name == "My Chroma" and run.meta["main_config"] == "e6ai_1024.toml"


def test_launch_is_disabled_while_review_shows_errors(page, wizard_studio):
    """Issue 11 item 3: a config Review marks ✗ (model files that do not exist) cannot be started; the errors are
    listed beside the button, and no run or profile is made."""
    url, manager, tmp = wizard_studio
    data = _dataset(tmp, bare=0, size=600)
    page.goto(url)
    _fill(page, "wiz-diffusers", str(tmp / "missing-flux"))
    _fill(page, "wiz-transformer", str(tmp / "missing-chroma.safetensors"))
    page.locator("#wiz-next-1").click()
    _fill(page, "wiz-dataset", str(data))
    page.locator("#wiz-next-2").click()
    page.get_by_label("Chroma E6AI 1024").check()
    page.locator("#wiz-review").click()
    page.locator("#wiz-issues").get_by_text("✗").first.wait_for()
    launch = page.locator("#wiz-launch")
    page.wait_for_function("document.querySelector('#wiz-launch')?.disabled === true")
    note = page.locator("#wiz-launch-message")
    note.get_by_text("before starting").wait_for()
    assert "missing-chroma.safetensors" in note.inner_text() and "missing-flux" in note.inner_text()
    launch.click(force=True)  # a disabled button does nothing
    page.wait_for_timeout(1000)
    assert manager.runs() == []


def test_the_model_picker_opens_the_same_path_for_flux(page, wizard_studio):
    url, manager, tmp = wizard_studio
    from tests.unit.test_wizard_models import _flux_folder

    folder = _flux_folder(tmp)
    data = _dataset(tmp, bare=0, size=600)
    page.goto(url)
    page.locator("#wiz-model").get_by_label("Flux").check()
    page.locator("#wiz-heading").get_by_text("Your Flux LoRA").wait_for()
    page.locator("#wiz-diffusers").get_by_text("FLUX.1-dev diffusers folder").wait_for()
    _fill(page, "wiz-diffusers", str(folder))
    page.locator("#wiz-check-models").click()
    page.locator("#wiz-models-report").get_by_text("every part of a Flux run").wait_for()
    page.locator("#wiz-next-1").click()
    _fill(page, "wiz-dataset", str(data))
    page.locator("#wiz-next-2").click()
    page.get_by_label("Flux E6AI 1024").check()
    page.locator("#wiz-vram").get_by_text("Flux's architecture").wait_for()
    page.locator("#wiz-review").click()
    page.locator("#wiz-issues").get_by_text("The config is valid").wait_for()
    assert "type = 'flux'" in page.locator("#wiz-main").inner_text()
    assert "Flux previews use" in page.locator("#wiz-sampling-note").inner_text()
    _fill(page, "wiz-profile-name", "My Flux")
    page.locator("#wiz-launch").click()
    page.wait_for_function("(document.querySelector('#dp-status')?.innerText ?? '').includes('step')")
    run = manager.runs()[0]
    assert run.name == "My Flux" and run.backend == "native"
    assert "type = 'flux'" in (run.run_dir / run.meta["main_config"]).read_text()


def test_the_model_picker_opens_the_same_path_for_sdxl(page, wizard_studio):
    """SDXL: step 1 asks for the one checkpoint file (no folder box), the preset becomes an SDXL config that
    validates, the estimate is SDXL's, and the run starts natively."""
    url, manager, tmp = wizard_studio
    from tests.unit.test_wizard_models import _sdxl_file

    checkpoint = _sdxl_file(tmp / "sdxl")
    data = _dataset(tmp, bare=0, size=600)
    page.goto(url)
    page.locator("#wiz-model").get_by_label("SDXL").check()
    page.locator("#wiz-heading").get_by_text("Your SDXL LoRA").wait_for()
    page.locator("#wiz-transformer").get_by_text("SDXL checkpoint (checkpoint_path").wait_for()
    page.locator("#wiz-diffusers").wait_for(state="hidden")
    _fill(page, "wiz-transformer", str(checkpoint))
    page.locator("#wiz-check-models").click()
    page.locator("#wiz-models-report").get_by_text("UNet, VAE and both text encoders").wait_for()
    page.locator("#wiz-next-1").click()
    _fill(page, "wiz-dataset", str(data))
    page.locator("#wiz-next-2").click()
    page.get_by_label("SDXL E6AI 1024").check()
    page.locator("#wiz-vram").get_by_text("SDXL's architecture").wait_for()
    page.locator("#wiz-review").click()
    page.locator("#wiz-issues").get_by_text("The config is valid").wait_for()
    main_text = page.locator("#wiz-main").inner_text()
    assert "type = 'sdxl'" in main_text and "checkpoint_path" in main_text and "diffusers_path" not in main_text
    assert "SDXL previews use" in page.locator("#wiz-sampling-note").inner_text()
    _fill(page, "wiz-profile-name", "My SDXL")
    page.locator("#wiz-launch").click()
    page.wait_for_function("(document.querySelector('#dp-status')?.innerText ?? '').includes('step')")
    run = manager.runs()[0]
    assert run.name == "My SDXL" and run.backend == "native"
    assert "type = 'sdxl'" in (run.run_dir / run.meta["main_config"]).read_text()
