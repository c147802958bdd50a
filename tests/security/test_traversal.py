"""Issue 10, item 1: run ids, saved folders and names from callers never reach outside the output folder.

Every named endpoint of the built page is probed with traversal ids ('..', absolute, percent-encoded, a symbolic
link, NUL, over-long) against decoy run folders, one of them with a live pid: nothing outside the output folder
changes, no decoy data comes back, and every refusal is the studio's own error (no traceback)."""

from __future__ import annotations

import gradio as gr
import pytest

from studio.api import RunsApi, _guard
from studio.services import Services
from tests.security.conftest import MARKER, REAL_RUN, REAL_SAVE
from tests.security.probe import Outcome, named_endpoints, probe
from trainers import run_library
from trainers.runs import RunError
from trainers.safe_paths import PathRefused, check_name, check_root, resolve_under

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RUN_ID_ENDPOINTS = {"run_info", "send_command", "cancel_queued", "saved_folders", "diff_runs", "mark_best",
                    "export_lora", "check_lora", "render_samples", "resume_points", "resume_run", "delete_run",
                    "watch_events"}


@pytest.fixture
def blocks(world, manager):
    import studio
    from trainers.demo_profile import prepare_demo

    demo = prepare_demo(world.base / "a" / "b" / "runs" / ".." / "demo", world.runs)
    return studio.build_app(Services(manager=manager, demo_main=demo))


def _clean(outcome: Outcome) -> None:
    kinds = sorted({c.split("(")[0] + ": " + c.split("): ")[-1].split(":")[0] for c in outcome.crashes})
    assert outcome.crashes == [], "\n".join(kinds + outcome.crashes[:3])
    leaked = [out for out in outcome.outputs if MARKER in out]
    assert leaked == [], leaked[:3]


def test_every_named_endpoint_refuses_traversal_against_decoys(world, blocks):
    # The decoy gets created by prepare_demo's folder too; snapshot after building.
    before = world.snapshot()
    endpoints = named_endpoints(blocks)
    assert RUN_ID_ENDPOINTS <= set(endpoints)  # a renamed endpoint must not silently drop out of this test
    outcome = probe(endpoints, world.probes(), Outcome())
    outcome = probe({k: v for k, v in endpoints.items() if k in RUN_ID_ENDPOINTS}, world.probes(), outcome,
                    fill=REAL_RUN)
    assert outcome.calls > 1000
    _clean(outcome)
    assert world.snapshot() == before
    assert (world.runs / REAL_RUN / "run.json").is_file()  # and the real run is still there


@pytest.mark.parametrize("run_id", ["../decoy", "../../../decoy", "linked", "%2e%2e%2fdecoy", "decoy\x00"])
def test_delete_and_command_never_touch_a_decoy(world, manager, run_id):
    api = RunsApi(manager)
    with pytest.raises(gr.Error, match="refused|no run named"):
        _guard(api.delete_run)(run_id, "decoy")
    with pytest.raises(gr.Error, match="refused|no run named"):
        _guard(api.send_command)(run_id, "stop")
    assert (world.near / "run.json").is_file() and (world.far / "run.json").is_file()
    assert not (world.near / "commands").exists() and not (world.far / "commands").exists()


def test_absolute_run_id_names_what_was_refused_and_why(world, manager):
    with pytest.raises(RunError, match=r"run id '/.*decoy' refused: it must be a single name"):
        manager.info(str(world.near))
    with pytest.raises(RunError, match="symbolic link"):
        manager.info("linked")


def test_saved_folder_must_lie_in_the_run(world, manager):
    info = manager.info(REAL_RUN)
    for folder in ("../../decoy/epoch1", str(world.near / "epoch1"), "epoch1/../../../decoy"):
        with pytest.raises(RunError, match="refused"):
            run_library.mark_best(info, folder)
    run_library.mark_best(info, REAL_SAVE)  # the real one still works
    assert (world.runs / REAL_RUN / "best.json").is_file()


def test_safe_paths_refusals_name_the_reason(tmp_path):
    cases = {"..": "not names", "a/b": "single name", "x\x00": "NUL", "%2e%2e": "percent-encoded",
             "a\\b": "backslash", "": "empty", "a\n": "control character", "x" * 300: "longer than 255"}
    for value, why in cases.items():
        with pytest.raises(PathRefused, match=why):
            check_name(value, "run id")
    with pytest.raises(PathRefused, match="climbs out"):
        resolve_under(tmp_path, "a/../../b", "saved folder")
    with pytest.raises(PathRefused, match="relative"):
        resolve_under(tmp_path, "/etc", "saved folder")
    (tmp_path / "out").symlink_to("/etc")
    with pytest.raises(PathRefused, match="symbolic link"):
        resolve_under(tmp_path, "out/passwd", "file")
    assert resolve_under(tmp_path, "dp/2026/epoch3", "saved folder") == tmp_path / "dp" / "2026" / "epoch3"


@pytest.mark.parametrize("root", ["/", "~", "/etc", "/usr/lib", "/home", "/tmp", "/var"])
def test_top_and_system_folders_are_refused_as_roots(root):
    with pytest.raises(PathRefused, match="refused"):
        check_root(root)


def test_studio_data_folder_is_refused_as_a_root_but_its_runs_folder_is_not(studio_home):
    with pytest.raises(PathRefused, match="secrets"):
        check_root(studio_home)
    assert check_root(studio_home / "runs") == (studio_home / "runs").resolve()


def test_run_with_output_dir_root_is_refused_before_anything_is_written(tmp_path, manager):
    from tests.conftest import write_pair

    main = write_pair(tmp_path / "p")
    main.write_text(main.read_text().replace("output_dir = 'out'", "output_dir = '/'"))
    with pytest.raises(RunError, match="output_dir '/' refused"):
        manager.start(main)


def test_resume_from_the_command_line_stays_in_the_output_folder(world, tmp_path, manager):
    from tests.conftest import write_pair

    main = write_pair(tmp_path / "p")
    for checkpoint in ("../decoy", str(world.far), "..%2fdecoy"):
        with pytest.raises(RunError, match="refused"):
            manager.resume_target(main, checkpoint)
