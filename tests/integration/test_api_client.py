"""Drive runs end to end through the named endpoints with gradio_client, as a script would."""

from __future__ import annotations

import pytest
from gradio_client import Client
from safetensors import safe_open

from studio.services import Services
from tests.conftest import make_valid, write_pair
from tests.e2e.conftest import serve
from trainers.demo_profile import prepare_demo
from trainers.events import load_all, parse_event
from trainers.runs import RunManager


@pytest.fixture
def client(tmp_path):
    main = make_valid(write_pair(tmp_path / "p", max_steps=100000))  # start_run validates first
    manager = RunManager([tmp_path / "p" / "out"], trainer_module="tests.fakes.trainer")
    blocks, url = serve(Services(manager=manager, demo_main=main, allowed_roots=[tmp_path]))
    yield Client(url, verbose=False), main
    blocks.close()


def test_start_watch_stop_list_through_named_endpoints(client):
    c, main = client
    info = c.predict(str(main), "api run", 0, api_name="/start_run")
    run_id = info["run_id"]
    assert info["status"] in ("starting", "running")
    job = c.submit(run_id, 0, api_name="/watch_events")
    kinds: list[str] = []
    for batch in job:
        kinds += [parse_event(line).kind for line in batch]
        if kinds.count("step") >= 3 and "stop" not in kinds:
            c.predict(run_id, "stop", api_name="/send_command")
            kinds.append("stop")
    assert kinds[0] == "phase" and kinds[-1] == "finished"
    runs = c.predict(api_name="/list_runs")
    assert [r["run_id"] for r in runs] == [run_id]
    assert c.predict(run_id, api_name="/run_info")["status"] in ("stopped", "running")  # pid may linger a moment
    with pytest.raises(Exception, match="stopped|running"):
        c.predict(run_id, "bogus", api_name="/send_command")


@pytest.fixture
def demo_client(tmp_path):
    """The studio on the embedded demo profile (real native training, a few steps at a time)."""
    main = prepare_demo(tmp_path / "demo", tmp_path / "out")
    manager = RunManager([tmp_path / "out"])
    blocks, url = serve(Services(manager=manager, demo_main=main, allowed_roots=[tmp_path]))
    yield Client(url, verbose=False, download_files=str(tmp_path / "downloads")), main, manager
    for run in manager.runs():
        if run.live:
            manager.kill(run.run_id)
    blocks.close()


def _watch_until(c, run_id: str, since: int, stop_after_steps: int) -> list:
    """Follow the run's events from index ``since``; send stop once enough new steps are done."""
    events, stopped = [], False
    for batch in c.submit(run_id, since, api_name="/watch_events"):
        events += [parse_event(line) for line in batch]
        if not stopped and sum(ev.kind == "step" for ev in events) >= stop_after_steps:
            c.predict(run_id, "stop", api_name="/send_command")
            stopped = True
        if events and events[-1].kind in ("finished", "failed"):
            break
    return events


def test_demo_run_end_to_end_through_named_endpoints(demo_client):
    c, main, manager = demo_client
    run_id = c.predict(str(main), "api demo", 0, api_name="/start_run")["run_id"]
    first = _watch_until(c, run_id, 0, stop_after_steps=2)
    assert first[-1].kind == "finished" and first[-1].reason == "stopped"
    assert [r["status"] for r in c.predict(api_name="/list_runs") if r["run_id"] == run_id] == ["stopped"]
    folders = c.predict(run_id, api_name="/saved_folders")
    assert folders == [f"step{first[-1].step}"]

    exported = c.predict(run_id, folders[0], "kohya", api_name="/export_lora")  # downloaded by the client
    with safe_open(exported, framework="np") as fh:
        keys = list(fh.keys())
        assert fh.metadata()["dp_studio.run_id"] == run_id
    assert keys and all(k.startswith("lora_unet_") for k in keys) and any(k.endswith(".alpha") for k in keys)
    check = c.predict(run_id, folders[0], api_name="/check_lora")  # against the demo's own transformer
    assert check["ok"] and check["exact"] and check["layout"] == "comfyui" and check["unmatched"] == []
    assert check["covered"] == check["targets"] > 0 and "every key fits" in check["report"]

    progress = list(c.submit(run_id, folders[0], ["a zxq cat"], [5], api_name="/render_samples"))
    saved = [ev for ev in first if ev.kind == "checkpoint" and ev.path == folders[0]]
    assert len(saved) == 1  # the stop may land in epoch 1 or 2 on a slow machine: the saved folder says which
    assert progress[0] == f"1 image with {folders[0]} (step {first[-1].step}, epoch {saved[0].epoch})"
    assert progress[-1].startswith("1/1 samples/")
    sidecar = [ev for ev in load_all(manager.run_dir(run_id)) if ev.kind == "sample" and ev.source == "sidecar"]
    assert [(ev.prompt, ev.seed, ev.step) for ev in sidecar] == [("a zxq cat", 5, first[-1].step)]
    with pytest.raises(Exception, match="'epoch99' is not a saved"):
        c.predict(run_id, "epoch99", api_name="/render_samples")

    points = c.predict(run_id, api_name="/resume_points")
    assert {p["kind"] for p in points} <= {"state", "lora"} and folders[0] in [p["name"] for p in points]
    point = next((p for p in points if p["kind"] == "state"), points[0])
    continued = c.predict(run_id, point["name"], api_name="/resume_run")
    assert continued["status"] in ("starting", "running", "queued")
    since = len(first) if continued["run_id"] == run_id else 0
    second = _watch_until(c, continued["run_id"], since, stop_after_steps=1)
    assert second[-1].kind == "finished", second[-1]
    assert [ev for ev in second if ev.kind == "step"][0].step > (point["step"] if point["kind"] == "state" else 0)
