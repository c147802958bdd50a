"""Browser-test fixtures: the studio served in-process, driven by Playwright in Debian's Chromium.

No browser is ever downloaded: Playwright launches /usr/bin/chromium (``make test`` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DP_STUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
SHOTS = Path(__file__).parent / "screenshots"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(services):
    """Launch the studio for ``services`` on a free loopback port; returns (blocks, url)."""
    import studio
    from studio.api import MAX_THREADS, QUEUE_SETTINGS
    from studio.layout import CSS, theme

    blocks = studio.build_app(services)
    port = _free_port()
    blocks.queue(**QUEUE_SETTINGS).launch(  # the limits app.py serves with
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True, css=CSS, theme=theme(),
        max_threads=int(os.environ.get("DP_STUDIO_BENCH_MAX_THREADS", MAX_THREADS)),
        allowed_paths=[str(p) for p in services.allowed_roots])
    return blocks, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory):
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium) "
                    "or set DP_STUDIO_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        yield ctx
        ctx.close()


@pytest.fixture
def page(browser_context):
    p = browser_context.new_page()
    p.set_default_timeout(30_000)
    yield p
    p.close()


def shot(page, name: str) -> None:
    """Keep a screenshot of what the user would see (for humans reading a failed run)."""
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        page_ = item.funcargs.get("page")
        if page_ is not None:
            try:
                shot(page_, f"FAILED-{item.name}")
            except Exception:  # noqa: BLE001 - a screenshot must never hide the real failure
                pass
    return report
