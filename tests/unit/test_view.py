from __future__ import annotations

import math
from pathlib import Path

from studio import view
from trainers.events import (
    CheckpointEvent,
    EvalEvent,
    FailedEvent,
    FinishedEvent,
    LogEvent,
    PhaseEvent,
    ResumedEvent,
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


def test_stream_view_options_survive_empty_or_odd_widget_values():
    # The stream's events skip Gradio's preprocessing: a slider whose browser value is momentarily empty
    # while a frame updates its range must fall back to a default, never fail the stream.
    from studio.tabs.monitor import view_options

    assert view_options(0.5, True, "warning", "nan", 12.0) == (0.5, True, "warning", "nan", 12)
    assert view_options(None, None, None, None, None) == (0.9, False, "info", "", 0)
    assert view_options("x", 0, "shout", 3, -4) == (0.9, False, "info", "", 0)
    assert view_options(7.0, 1, "error", "q", float("nan"))[0] == 0.99
    assert view_options(0.1, 1, "error", "q", float("nan"))[4] == 0


def _resumed(step: int, epoch: int, checkpoint: str = "global_step2") -> ResumedEvent:
    return ResumedEvent(step=step, epoch=epoch, checkpoint=checkpoint)


def _eval(step: int, loss: float, name: str = "val", **quantiles: float) -> EvalEvent:
    return EvalEvent(step=step, epoch=1, name=name, loss=loss,
                     quantiles={k.replace("q", "0."): v for k, v in quantiles.items()})


def test_eval_points_are_kept_per_set_and_charted_with_quantiles():
    state = view.fold([_eval(0, 0.9, q1=0.5, q9=1.3), _eval(10, 0.7, q1=0.4, q9=1.0), _eval(10, 0.8, name="held")],
                      Path("/r"))
    assert view.has_evals(state) and [p.loss for p in state.evals["val"]] == [0.9, 0.7]
    fig = view.eval_figure(state)
    names = [t.name for t in fig.data]
    assert names == ["held loss", "val loss", "val quantiles", "val quantiles"]
    assert list(fig.data[1].y) == [0.9, 0.7] and list(fig.data[3].y) == [1.3, 1.0]
    assert [t.showlegend for t in fig.data[2:]] == [True, False]  # one legend entry toggles a set's quantiles
    assert not view.has_evals(view.fold(_events(), Path("/r")))


def test_grad_norm_is_charted_only_from_steps_that_report_it():
    events = [StepEvent(step=1, epoch=1, loss=1.0, lr=1e-4), StepEvent(step=2, epoch=1, loss=1.0, lr=1e-4,
                                                                       grad_norm=0.5),
              StepEvent(step=3, epoch=1, loss=1.0, lr=1e-4, grad_norm=float("inf"))]
    state = view.fold(events, Path("/r"))
    assert state.grad_steps == [2] and state.grad_norms == [0.5]
    assert list(view.grad_norm_figure(state).data[0].y) == [0.5]


def test_resumed_drops_the_tail_that_the_restart_replaces():
    run = Path("/r")
    before = [StepEvent(step=s, epoch=1, loss=1.0 / s, lr=1e-4, grad_norm=0.1 * s) for s in (1, 2, 3, 4)]
    before += [_eval(2, 0.8), _eval(4, 0.6), SampleEvent(step=2, epoch=1, path="samples/2.png", prompt="p", seed=1),
               SampleEvent(step=4, epoch=1, path="samples/4.png", prompt="p", seed=1), _eval(4, 0.5, name="late")]
    after = [StepEvent(step=3, epoch=1, loss=0.3, lr=1e-4, grad_norm=0.9),
             SampleEvent(step=3, epoch=1, path="samples/3.png", prompt="p", seed=1)]
    state = view.fold([*before, _resumed(2, 1), *after], run)
    assert state.steps == [1, 2, 3] and state.losses == [1.0, 0.5, 0.3] and len(state.lrs) == 3
    assert state.grad_steps == [1, 2, 3] and state.grad_norms[-1] == 0.9
    assert [p.step for p in state.evals["val"]] == [2] and "late" not in state.evals
    assert [s.step for s in state.samples] == [2, 3]
    assert "resumed from global_step2 at step 2" in view.log_text(state)


def test_gallery_groups_by_step_newest_first_and_the_slider_picks_one_step():
    run = Path("/r")
    events = [SampleEvent(step=s, epoch=1, path=f"samples/{s}_{i}.png", prompt=f"p{i}", seed=7, index=i)
              for s in (0, 10, 20) for i in (0, 1)]
    state = view.fold(events, run)
    items = view.gallery_items(state)
    assert [i[0] for i in items] == ["/r/samples/20_0.png", "/r/samples/20_1.png", "/r/samples/10_0.png",
                                     "/r/samples/10_1.png", "/r/samples/0_0.png", "/r/samples/0_1.png"]
    assert view.sample_steps(state) == [0, 10, 20] and view.scrub_maximum(state) == 20
    assert [c for _, c in view.gallery_items(state, 12)] == ["step 10 · seed 7 · p0", "step 10 · seed 7 · p1"]
    assert view.nearest_sample_step([0, 10, 20], 15) == 10 and view.nearest_sample_step([0, 10, 20], 16) == 20
    assert view.nearest_sample_step([0, 10], 0) is None and view.nearest_sample_step([], 5) is None
    assert "step 10 (2 of 3" in view.gallery_label(state, 12) and "all 3 sampled steps" in view.gallery_label(state)
    assert view.scrub_maximum(view.MonitorState()) == 1 and "none yet" in view.gallery_label(view.MonitorState())


def test_a_rewritten_sample_replaces_the_older_entry_and_sidecar_renders_are_captioned():
    events = [SampleEvent(step=6, epoch=1, path="samples/epoch1_p0_s7.png", prompt="old", seed=7, source="sidecar"),
              SampleEvent(step=6, epoch=1, path="samples/epoch1_p0_s7.png", prompt="new", seed=7, source="sidecar")]
    state = view.fold(events, Path("/r"))
    assert len(state.samples) == 1 and state.samples[0].prompt == "new" and state.samples[0].source == "sidecar"
    assert view.gallery_items(state) == [("/r/samples/epoch1_p0_s7.png", "step 6 (sidecar) · seed 7 · new")]


def test_status_shows_samples_per_second_and_epoch():
    state = view.fold([StepEvent(step=3, epoch=2, loss=0.25, lr=1e-4, it_per_s=1.5, samples_per_s=6.0,
                                 total_steps=9, eta_s=4)], Path("/r"))
    line = view.status_markdown(state, "r1")
    assert "step 3/9 · epoch 2" in line and "1.50 it/s · 6.00 samples/s" in line


def test_a_stream_skips_outputs_that_did_not_change():
    # Every frame used to resend the whole gallery (each image through Gradio's file cache) and the slider's
    # range; a stream now sends each output only when it changes, and the charts only when there are new points
    # (studio/tabs/monitor.py's frames).
    from studio.tabs.monitor import _frame

    skip = {"__type__": "update"}
    options = (0.9, False, "info", "", 0)
    events = [StepEvent(step=s, epoch=1, loss=1 / s, lr=1e-4, total_steps=10) for s in (1, 2)]
    events.append(SampleEvent(step=2, epoch=1, path="samples/2.png", prompt="p", seed=1))
    state = view.fold(events, Path("/r"), view.MonitorState())
    sent: dict = {}
    first = _frame(state, "r", options, "", sent)
    assert all(out != skip for out in first)
    again = _frame(state, "r", options, "", sent)
    assert again == (skip,) * len(first)  # nothing changed: the browser redraws nothing
    view.fold([StepEvent(step=3, epoch=1, loss=0.3, lr=1e-4, total_steps=10)], Path("/r"), state)
    # A frame without the heavy outputs: the status moves, the charts wait (and are not forgotten).
    light = _frame(state, "r", options, "", sent, heavy=False)
    assert light[0] != skip and light[2:8] == (skip,) * 6
    stepped = _frame(state, "r", options, "", sent)
    assert stepped[0] == skip and stepped[2] != skip and stepped[3] != skip and stepped[6:8] == (skip, skip)
    options = (0.5, False, "info", "", 0)
    assert _frame(state, "r", options, "", sent)[2] != skip  # new smoothing: redrawn
    view.fold([SampleEvent(step=3, epoch=1, path="samples/3.png", prompt="p", seed=1)], Path("/r"), state)
    sampled = _frame(state, "r", options, "", sent)
    assert sampled[6] != skip and sampled[7] != skip and sampled[2] == skip
    # Without a memo (a one-off frame) everything is built.
    assert all(out != skip for out in _frame(state, "r", options, ""))


def test_a_resumed_leg_is_not_described_by_the_previous_legs_end():
    """Stopped at step 2, resumed in place: the status is the new leg's (training, with an ETA), not "stopped"."""
    first = [StepEvent(step=s, epoch=1, loss=1.0, lr=1e-4, total_steps=9, eta_s=90) for s in (1, 2)]
    first.append(FinishedEvent(step=2, epoch=1, reason="stopped"))
    stopped = view.fold(first, Path("/r"))
    assert "**stopped**" in view.status_markdown(stopped, "r") and "ETA" not in view.status_markdown(stopped, "r")
    state = view.fold([_resumed(2, 1), PhaseEvent(phase="training"),
                       StepEvent(step=3, epoch=1, loss=0.9, lr=1e-4, total_steps=9, eta_s=60)], Path("/r"), stopped)
    line = view.status_markdown(state, "r")
    assert "**training**" in line and "stopped" not in line and "step 3/9" in line and "ETA 1:00" in line
    assert 'data-phase="training"' in view.progress_html(state)


def test_a_stream_draws_the_last_points_after_the_events_stop(monkeypatch, tmp_path):
    """Charts wait for the next heavy frame; when the run falls silent right after a light frame, the stream
    still sends them (a frame without the heavy outputs stays dirty)."""
    import time as clock
    from types import SimpleNamespace

    from studio.tabs import monitor

    monkeypatch.setattr(monitor, "POLL_S", 0.01)
    monkeypatch.setattr(monitor, "MIN_FRAME_S", 0.02)
    monkeypatch.setattr(monitor, "HEAVY_EVERY_S", 0.3)
    monkeypatch.setattr(monitor, "RESOURCES_EVERY_S", 60)
    monkeypatch.setattr(monitor, "snapshot", lambda run_dir: None)
    monkeypatch.setattr(monitor.view, "resources_markdown", lambda snap: "")

    def batches(run_id, heartbeat_s):
        for s in range(1, 6):
            yield [StepEvent(step=s, epoch=1, loss=1 / s, lr=1e-4, total_steps=10)]
            clock.sleep(0.03)
        while True:  # silence: heartbeats only
            yield []
            clock.sleep(heartbeat_s)

    manager = SimpleNamespace(event_batches=batches, run_dir=lambda run_id: tmp_path, roots=[tmp_path])
    views = monitor.MonitorViews()
    views.update("s", run_id="r")
    deadline = clock.monotonic() + 3
    last_x = 0.0
    for frame in monitor.stream(SimpleNamespace(manager=manager), views, "s",
                                still_wanted=lambda: clock.monotonic() < deadline):
        if frame[2] != {"__type__": "update"}:
            last_x = max(frame[2].data[0].x)
        if last_x == 5:
            break
    assert last_x == 5


def test_a_phase_that_reports_progress_moves_the_bar_before_the_first_loss():
    from trainers.events import PhaseEvent

    events = [PhaseEvent(phase="caching", message="400 examples of the training set", total=400)]
    events += [PhaseEvent(phase="caching", message=f"latents of the training set: {n}/400", total=400, done=n)
               for n in (0, 120, 300)]
    state = view.fold(events, Path("/r"), view.MonitorState())
    html_ = view.progress_html(state)
    assert "120" not in html_ and "300/400" in html_ and "width:75.0%" in html_
    assert "latents of the training set: 300/400" in view.status_markdown(state, "r")
    assert "ETA after the first steps" not in view.status_markdown(state, "r")  # no steps yet: no ETA at all
    assert sum("caching" in line for line in state.logs) == 1  # progress is shown, not logged line by line
    # Training begins: the bar is the steps' again; the first step's ETA is not a guess from a cold step.
    view.fold([PhaseEvent(phase="training", total=10), StepEvent(step=1, epoch=1, loss=1.0, lr=1e-4, total_steps=10)],
              Path("/r"), state)
    assert "1/10 steps" in view.progress_html(state) and "ETA after the first steps" in view.progress_html(state)
    view.fold([PhaseEvent(phase="sampling", message="step 1: previews 1-2 of 2", total=2, done=0)], Path("/r"), state)
    status = view.status_markdown(state, "r")
    assert "previews 1-2 of 2" in status and "step 1/10" in status and "0/2" in view.progress_html(state)
