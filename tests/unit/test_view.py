from __future__ import annotations

import math
from pathlib import Path

from studio import view
from trainers.events import (
    CheckpointEvent,
    FailedEvent,
    FinishedEvent,
    LogEvent,
    PhaseEvent,
    SampleEvent,
    StepEvent,
)


def _events():
    return [PhaseEvent(phase="training", total=3),
            StepEvent(step=1, epoch=1, loss=1.0, lr=1e-4, total_steps=3, it_per_s=2.0, eta_s=65),
            SampleEvent(step=1, epoch=1, path="samples/a.png", prompt="zxq cat", seed=7),
            StepEvent(step=2, epoch=1, loss=0.5, lr=2e-4, total_steps=3, it_per_s=2.0, eta_s=3700),
            SampleEvent(step=2, epoch=1, path="samples/b.png", prompt="zxq cat", seed=7),
            CheckpointEvent(step=2, epoch=1, path="epoch1"), LogEvent(level="warning", message="careful")]


def test_fold_accumulates_steps_samples_and_logs():
    state = view.fold(_events(), Path("/runs/r1"))
    assert state.steps == [1, 2] and state.losses == [1.0, 0.5] and state.lrs == [1e-4, 2e-4]
    assert state.phase == "training" and state.total_steps == 3
    assert [s[1] for s in state.samples] == ["/runs/r1/samples/a.png", "/runs/r1/samples/b.png"]
    assert state.saves == ["epoch1"]
    assert state.logs[-1] == "[WARNING] careful"


def test_gallery_is_newest_first_with_captions():
    items = view.gallery_items(view.fold(_events(), Path("/r")))
    assert items[0] == ("/r/samples/b.png", "step 2 · seed 7 · zxq cat")
    assert [i[0] for i in items] == ["/r/samples/b.png", "/r/samples/a.png"]


def test_status_line_shows_progress_then_outcome():
    state = view.fold(_events(), Path("/r"))
    line = view.status_markdown(state, "r1")
    assert "step 2/3" in line and "loss 0.5 " in line and "ETA 1:01:40" in line
    view.fold([FinishedEvent(step=2, epoch=1, reason="stopped")], Path("/r"), state)
    line = view.status_markdown(state, "r1")
    assert "**stopped**" in line and "ETA" not in line
    failed = view.fold([FailedEvent(error="CUDA out of memory")], Path("/r"))
    assert "failed: CUDA out of memory" in view.status_markdown(failed, "r2")
    assert "No run attached" in view.status_markdown(view.MonitorState(), None)


def test_ema_is_bias_corrected_and_skips_non_finite():
    assert view.ema([2.0, 2.0, 2.0], 0.9) == [2.0, 2.0, 2.0]
    smoothed = view.ema([1.0, float("nan"), 0.0], 0.5)
    assert smoothed[1] == 1.0 and math.isclose(smoothed[2], 1 / 3)


def test_loss_figure_has_raw_and_smoothed_traces():
    fig = view.loss_figure(view.fold(_events(), Path("/r")), smoothing=0.5)
    assert [t.name for t in fig.data] == ["loss", "EMA 0.5"]
    assert list(fig.data[0].y) == [1.0, 0.5]
    assert len(view.loss_figure(view.MonitorState()).data) == 1


def test_log_tail_is_bounded():
    state = view.MonitorState()
    view.fold([LogEvent(message=str(i)) for i in range(1000)], Path("/r"), state)
    assert len(state.logs) <= 2 * view.LOG_TAIL_LINES
    assert view.log_text(state).splitlines()[-1] == "[INFO] 999"


def test_eta_format():
    assert view.format_eta(None) == "–" and view.format_eta(59.6) == "1:00" and view.format_eta(3661) == "1:01:01"


def test_log_filter_by_level_and_search():
    state = view.fold([LogEvent(level="debug", message="d"), LogEvent(level="info", message="Cache ready"),
                       LogEvent(level="warning", message="bucket dropped"), LogEvent(level="error", message="e")],
                      Path("/r"))
    assert view.log_text(state, level="warning").splitlines() == ["[WARNING] bucket dropped", "[ERROR] e"]
    assert view.log_text(state, query="cache") == "[INFO] Cache ready"
    assert len(view.log_text(state).splitlines()) == 4


def test_progress_html_tracks_steps_and_outcome():
    state = view.fold(_events(), Path("/r"))
    html = view.progress_html(state)
    assert "2/3 steps" in html and "width:66.7%" in html and "ETA" in html and 'data-phase="training"' in html
    view.fold([FinishedEvent(step=3, epoch=1)], Path("/r"), state)
    assert "width:100.0%" in view.progress_html(state) and "ETA" not in view.progress_html(state)


def test_lr_figure_and_log_scale():
    state = view.fold(_events(), Path("/r"))
    assert list(view.lr_figure(state).data[0].y) == [1e-4, 2e-4]
    assert view.loss_figure(state, log_y=True).layout.yaxis.type == "log"


def test_resources_line_names_gpus_or_why_none():
    from trainers.resources import GpuInfo, Resources

    res = Resources(12.0, 3.5, 24.0, 80.2, [GpuInfo(0, "H100", 10.0, 80.0, 97.0)])
    text = view.resources_markdown(res)
    assert "CPU 12%" in text and "disk free 80.2 GB" in text and "GPU0 H100: 10.0/80.0 GB · 97%" in text
    assert "no NVIDIA GPU" in view.resources_markdown(Resources(1, 1, 2, None, [], "no NVIDIA GPU"))


def test_resources_snapshot_reads_this_machine(tmp_path):
    from trainers.resources import snapshot

    res = snapshot(tmp_path)
    assert res.ram_total_gb > 0 and res.disk_free_gb is not None and res.disk_free_gb > 0


def test_thin_keeps_curves_small_and_the_newest_point():
    xs = list(range(10_001))
    tx, ty = view.thin(xs, [x * 2 for x in xs], limit=1000)
    assert len(tx) <= 1002 and tx[0] == 0 and tx[-1] == 10_000 and ty[-1] == 20_000
    assert view.thin([1, 2], [3, 4]) == ([1, 2], [3, 4])


def test_command_buttons_say_what_a_backend_cannot_do(tmp_path):
    import json

    from studio.services import Services
    from studio.tabs.monitor import command_buttons
    from trainers.runs import RunManager

    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"backend": "diffusion-pipe", "name": "x"}))
    services = Services(manager=RunManager([tmp_path / "runs"]), demo_main=tmp_path / "none.toml")
    save, sample, note = command_buttons(services, "r1")
    assert sample.interactive is False and "sidecar sampling" in note and "checkpoint" in save.value
    save, sample, note = command_buttons(services, None)
    assert save.interactive is False and note == ""
