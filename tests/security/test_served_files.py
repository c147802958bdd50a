"""Issue 10, item 2: no output folder is ever a served file root. Only the files a page shows (sample previews,
exports) are reachable through Gradio's file route, each by its published name; everything else in an output
folder, in a folder a run was started in, or anywhere else answers 403, after any run and across restarts."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import httpx
import pytest

from studio import served
from studio.services import Services
from tests.conftest import write_pair
from tests.security.conftest import MARKER, REAL_RUN
from trainers.events import load_all
from trainers.runs import RunManager


def _file_url(url: str, path: Path | str) -> str:
    return f"{url}gradio_api/file={path}"


def _wait_for_sample(run_dir: Path, timeout_s: float = 30.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = [ev for ev in load_all(run_dir) if ev.kind == "sample"]
        if samples:
            return run_dir / samples[0].path
        time.sleep(0.1)
    raise AssertionError(f"no sample written in {run_dir}")


@pytest.fixture
def studio_url(world, manager, tmp_path):
    import studio
    from app import launch
    from tests.e2e.conftest import _free_port

    blocks = studio.build_app(Services(manager=manager, demo_main=write_pair(tmp_path / "demo")))
    url = launch(blocks, "127.0.0.1", _free_port(), None, block=False)
    yield url
    blocks.close()


def test_files_outside_what_a_page_showed_are_unreachable(world, manager, studio_url, tmp_path):
    from studio.tabs import monitor

    # A run whose output_dir is a folder of its own: before, that folder became a served root for good.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "private.txt").write_text(MARKER)
    main = write_pair(tmp_path / "p", max_steps=6)
    main.write_text(main.read_text().replace("output_dir = 'out'", f"output_dir = '{elsewhere}'"))
    run_id = manager.start(main)
    run_dir = manager.run_dir(run_id)
    sample = _wait_for_sample(run_dir)
    views = monitor.MonitorViews()
    views.update("s", run_id=run_id)
    deadline = time.monotonic() + 60
    frames = monitor.stream(Services(manager=manager, demo_main=main), views, "s",
                            still_wanted=lambda: time.monotonic() < deadline)
    gallery = next(frame[6] for frame in frames if isinstance(frame[6], gr.Gallery) and frame[6].value)
    shown = [Path(item["image"]["path"]) for item in gallery.value]  # what the page receives
    assert shown and all(served.served_dir() in p.parents for p in shown)

    with httpx.Client(timeout=10) as client:
        got = client.get(_file_url(studio_url, shown[0]))
        assert got.status_code == 200 and got.content == Path(sample).read_bytes()
        for path in (elsewhere / "private.txt", sample, run_dir / "run.json", run_dir / main.name,
                     world.runs / REAL_RUN / "main.toml", world.near / "secret.txt", Path("/etc/passwd"),
                     served.served_dir().parent / "roots.json"):
            assert client.get(_file_url(studio_url, path)).status_code == 403, path


def test_a_restart_serves_no_remembered_output_folder(world, tmp_path, studio_url):
    elsewhere = tmp_path / "kept"
    (elsewhere / "run").mkdir(parents=True)
    (elsewhere / "run" / "private.txt").write_text(MARKER)
    manager = RunManager([world.runs])
    manager._remember_root(elsewhere)  # what every run start does
    import studio

    studio.build_app(Services(manager=RunManager([world.runs]), demo_main=write_pair(tmp_path / "d2")))
    with httpx.Client(timeout=10) as client:
        assert client.get(_file_url(studio_url, elsewhere / "run" / "private.txt")).status_code == 403


def test_publish_refuses_what_lies_outside_the_output_folders(world, tmp_path):
    with pytest.raises(ValueError, match="not inside an output folder"):
        served.publish(world.near / "secret.txt", [world.runs])
    link = world.runs / REAL_RUN / "peek.txt"
    link.symlink_to(world.near / "secret.txt")
    with pytest.raises(ValueError, match="not inside an output folder"):
        served.publish(link, [world.runs])
    published = served.publish(world.runs / REAL_RUN / "main.toml", [world.runs])
    assert published.read_bytes() == (world.runs / REAL_RUN / "main.toml").read_bytes()
    assert served.publish(world.runs / REAL_RUN / "main.toml", [world.runs]) == published  # one name per version


def test_prune_drops_published_files_of_deleted_runs(world):
    source = world.runs / REAL_RUN / "main.toml"
    published = served.publish(source, [world.runs])
    assert served.prune() == 0 and published.exists()
    source.unlink()
    assert served.prune() == 1 and not published.exists()
