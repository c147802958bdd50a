"""The pictures in docs/ and the page's layout, in a real browser: a screenshot of every tab (written into
docs/images/ by `make docs-screenshots`, into the test's folder otherwise), light and dark themes with charts
that stay legible, the monitor and the wizard at 390 px and 2560 px wide, keyboard navigation through the wizard,
and an axe-core scan of every tab (axe-core vendored under tests/vendor/axe-core)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve
from tests.unit.test_wizard_view import _models
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
MAX_PNG_BYTES = 250_000
# (tab label, element that shows the tab has drawn, picture name)
TABS = [("Chroma setup", "#wizard-start", "tab-wizard"), ("Config builder", "#builder-type", "tab-builder"),
        ("Profiles", "#profiles-table", "tab-profiles"), ("Dataset browser", "#datasets-folder", "tab-datasets"),
        ("Live monitor", "#monitor-loss .js-plotly-plot", "tab-monitor"), ("Runs library", "#runs-table",
                                                                         "tab-runs")]
EVALS = ("eval_every_n_steps = 5\neval_datasets = [{name = 'held', config = 'ds.toml'}]\n")


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    """The studio with one finished run (trainer double: loss, eval loss and samples) in the library."""
    tmp = tmp_path_factory.mktemp("docs")
    manager = RunManager([tmp / "p" / "out"], trainer_module="tests.fakes.trainer")
    run_id = manager.start(write_pair(tmp / "p", max_steps=30, extra_main=EVALS), name="zxq style")
    list(manager.events(run_id))
    blocks, url = serve(Services(manager=manager, demo_main=tmp / "p" / "main.toml", allowed_roots=[tmp]))
    yield url, tmp
    blocks.close()


@pytest.fixture
def pictures(tmp_path) -> Path:
    """docs/images when `make docs-screenshots` runs the tests (DP_STUDIO_DOC_SHOTS=1), else a scratch folder."""
    if os.environ.get("DP_STUDIO_DOC_SHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOC_IMAGES
    return tmp_path


def small_png(page, path: Path, *, full_page: bool = False) -> Path:
    """A screenshot reduced to a 64-colour palette (docs stay light); returns the path."""
    page.screenshot(path=str(path), full_page=full_page)
    with Image.open(path) as img:
        img.convert("RGB").quantize(colors=64).save(path, optimize=True)
    assert path.stat().st_size < MAX_PNG_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    return path


def _open_tab(page, label: str, ready: str) -> None:
    """Click the tab; on a narrow screen the tabs that do not fit sit in the tab bar's overflow menu."""
    page.get_by_role("tab").first.wait_for()
    tab = page.get_by_role("tab", name=label)
    if not tab.is_visible():
        page.locator(".overflow-menu button").first.click()
        tab = page.locator(".overflow-dropdown").get_by_text(label, exact=True)
    tab.click()
    page.locator(ready).first.wait_for(state="visible")


def test_a_screenshot_of_every_tab(page, studio_url, pictures):
    url, _ = studio_url
    page.set_viewport_size({"width": 1280, "height": 860})
    page.goto(url)
    # The monitor first: its loss and LR charts are drawn only when data arrives while the tab is shown.
    for label, ready, name in [TABS[4], *TABS[:4], TABS[5]]:
        _open_tab(page, label, ready)
        if name == "tab-monitor":
            page.wait_for_function("(document.querySelector('#dp-status')?.innerText ?? '').includes('step 30')")
        page.wait_for_timeout(300)  # let the tab's transition settle before the picture (not an assertion)
        assert small_png(page, pictures / f"{name}.png").is_file()


def _luminance(rgb: str) -> float:
    values = [int(v) / 255 for v in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3]]
    lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in values]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


CHART_COLOURS = """(sel) => {
  const svg = document.querySelector(sel + ' .main-svg');
  const bg = svg ? getComputedStyle(svg).backgroundColor : '';
  const paper = document.querySelector(sel + ' .main-svg rect.bg');
  const tick = document.querySelector(sel + ' .xtick text');
  return {bg: paper ? getComputedStyle(paper).fill : bg, svg: bg, tick: tick ? getComputedStyle(tick).fill : ''};
}"""


# The header's text colour and the first opaque background behind it.
PAGE_COLOURS = """(() => {
  const text = document.querySelector('#dp-header p') || document.querySelector('#dp-header');
  let el = text, bg = 'rgba(0, 0, 0, 0)';
  while (el && (bg === 'rgba(0, 0, 0, 0)' || bg === 'transparent')) {
    bg = getComputedStyle(el).backgroundColor; el = el.parentElement;
  }
  return {fg: getComputedStyle(text).color, bg};
})()"""


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_themes_keep_text_and_charts_legible(page, studio_url, pictures, theme):
    url, _ = studio_url
    page.set_viewport_size({"width": 1280, "height": 860})
    page.goto(f"{url}?__theme={theme}")
    page.locator("#wizard-start").wait_for()
    if theme == "dark":
        page.wait_for_function("document.querySelector('.dark') !== null")
    else:
        assert page.evaluate("document.querySelector('.dark') === null")
    _open_tab(page, "Live monitor", "#monitor-loss .js-plotly-plot")
    page.locator("#monitor-loss .xtick text").first.wait_for()
    colours = page.evaluate(CHART_COLOURS, "#monitor-loss")
    paper = colours["svg"] if colours["svg"] not in ("", "rgba(0, 0, 0, 0)") else colours["bg"]
    assert contrast(colours["tick"], paper) >= 4.5, colours
    body = page.evaluate(PAGE_COLOURS)
    assert contrast(body["fg"], body["bg"]) >= 4.5, body
    small_png(page, pictures / f"theme-{theme}-monitor.png")


@pytest.mark.parametrize("width", [390, 2560])
def test_monitor_and_wizard_fit_small_and_large_screens(page, studio_url, pictures, width):
    url, _ = studio_url
    page.set_viewport_size({"width": width, "height": 844 if width == 390 else 1440})
    page.goto(url)
    for label, ready, name in (TABS[0], TABS[4]):
        _open_tab(page, label, ready)
        page.wait_for_timeout(300)  # layout settles after the tab switch (not an assertion)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} scrolls sideways by {overflow} px at {width} px"
        buttons = page.locator("#wizard-start" if name == "tab-wizard" else "#monitor-stop")
        box = buttons.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width  # the main action is on screen
        small_png(page, pictures / f"{name.removeprefix('tab-')}-{width}px.png")


def _tab_until(page, elem_id: str, limit: int = 25) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement?.id ?? ''") == elem_id or page.evaluate(
                f"!!document.activeElement?.closest('#{elem_id}')"):
            return
    raise AssertionError(f"#{elem_id} cannot be reached with the Tab key")


def test_keyboard_alone_walks_the_wizard(page, studio_url):
    url, tmp = studio_url
    flux, ckpt = _models(tmp / "kb")
    page.goto(url)
    page.locator("#wiz-diffusers textarea, #wiz-diffusers input").first.focus()
    page.keyboard.type(str(flux))
    _tab_until(page, "wiz-transformer")
    page.keyboard.type(str(ckpt))
    _tab_until(page, "wiz-check-models")
    page.keyboard.press("Enter")
    page.locator("#wiz-models-report").get_by_text("chroma transformer").wait_for()
    _tab_until(page, "wiz-next-1")
    page.keyboard.press("Enter")
    page.locator("#wiz-dataset").wait_for(state="visible")
    _tab_until(page, "wiz-dataset")  # focus moves on into step 2 with the keyboard too


AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe-core" / "axe.min.js"  # axe-core 4.11.0, MPL-2.0


# Gradio's own markup that our code cannot change (docs/accessibility.md): an empty gr.Gallery draws
# <div class="empty large unpadded_box" aria-label="Empty value"> (no role, so the label is not allowed).
GRADIO_OWN = {("aria-prohibited-attr", ".empty.large.unpadded_box")}


def _ours(violation: dict) -> bool:
    """Whether a violation has a node outside the Gradio exceptions above."""
    return any(not any(violation["id"] == rule and str(node["target"][-1]).endswith(where)
                       for rule, where in GRADIO_OWN) for node in violation["nodes"])


def _axe_violations(page) -> list[dict]:
    """axe-core's violations of impact serious or critical on the page as it is now (the Gradio exceptions
    left out, exactly those rule-on-element pairs)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [v for v in result if v.get("impact") in ("serious", "critical") and _ours(v)]


def _describe_violations(label: str, bad: list[dict]) -> str:
    lines = [f"{label}: {len(bad)} serious/critical accessibility violations"]
    for v in bad:
        targets = ", ".join(" ".join(n["target"]) if isinstance(n["target"], list) else str(n["target"])
                            for n in v["nodes"][:6])
        lines.append(f"  {v['id']} ({v['impact']}): {v['help']} -> {targets}")
    return "\n".join(lines)


def test_axe_scan_of_every_tab(page, studio_url):
    """axe-core (vendored, tests/vendor/axe-core) finds no serious or critical violation on any tab."""
    url, _ = studio_url
    page.goto(url)
    problems = []
    for label, ready, _name in TABS:
        _open_tab(page, label, ready)
        bad = _axe_violations(page)
        if bad:
            problems.append(_describe_violations(label, bad))
    assert not problems, "\n".join(problems)


def test_wizard_step_labels_stay_inside_their_container(page, studio_url):
    """Issue 11 item 9: the wizard's step labels spilled past the stepper (the last one to the window's edge)."""
    url, _ = studio_url
    page.set_viewport_size({"width": 1280, "height": 860})
    page.goto(url)
    page.locator("#wizard-start").wait_for()
    spill = page.evaluate("""() => [...document.querySelectorAll('.step-label')].map(label => {
        const box = label.getBoundingClientRect(), outer = label.closest('.stepper').getBoundingClientRect();
        return [label.textContent.trim(), Math.round(outer.left - box.left), Math.round(box.right - outer.right)];
    }).filter(([, left, right]) => left > 0 || right > 0)""")
    assert spill == [], spill
