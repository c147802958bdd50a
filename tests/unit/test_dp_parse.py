"""The diffusion-pipe console parser on golden log snippets (tests/golden/dp_logs, written from the documented
line formats): steps with their lr, epochs and ETA, saves, caching and eval phases, NaN, tracebacks, endings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainers.diffusion_pipe.parse import STALE_STEP_S, LogParser, Schedule, clean_line, log_level

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "dp_logs"


def lines_of(name: str) -> list[str]:
    """The golden file split as the supervisor splits output: at \\n and at tqdm's \\r."""
    text = (GOLDEN / name).read_text(encoding="utf-8")
    return [ln for ln in re.split(r"\r\n|\r|\n", text) if not ln.startswith("# ")]


def run(name: str, parser: LogParser, exit_code: int = 0, **finish) -> list:
    events = [ev for line in lines_of(name) for ev in parser.feed(line)]
    return events + parser.finish(exit_code, **finish)


def of(events, kind):
    return [ev for ev in events if ev.kind == kind]


def test_complete_run_steps_carry_their_own_lr_and_epoch():
    events = run("complete_run.log", LogParser(Schedule(epochs=2, initial_lr=1e-4)))
    steps = of(events, "step")
    assert [s.step for s in steps] == list(range(1, 9))
    assert [s.lr for s in steps[:4]] == [2.5e-05, 5e-05, 7.5e-05, 1e-04]
    assert [s.epoch for s in steps] == [1] * 4 + [2] * 4
    assert steps[0].loss == pytest.approx(0.4013)
    assert steps[0].it_per_s == pytest.approx(0.5) and steps[0].samples_per_s == pytest.approx(0.5)


def test_steps_per_epoch_is_inferred_at_epoch_two_and_gives_total_and_eta():
    parser = LogParser(Schedule(epochs=2))
    steps = of(run("complete_run.log", parser), "step")
    assert parser.steps_per_epoch == 4
    assert [s.total_steps for s in steps[:4]] == [None] * 4  # not printed by diffusion-pipe, not yet known
    assert steps[4].total_steps == 8
    assert steps[4].eta_s == pytest.approx((8 - 5) * 2.0)
    assert steps[-1].eta_s == 0


def test_saves_become_lora_checkpoints_with_epoch_and_step():
    events = run("complete_run.log", LogParser(Schedule(epochs=2)))
    saves = of(events, "checkpoint")
    assert [(c.path, c.epoch, c.step, c.what) for c in saves] == [("epoch1", 1, 4, "lora"), ("epoch2", 2, 8, "lora")]
    assert any(ev.kind == "phase" and ev.phase == "saving" and ev.message == "epoch1" for ev in events)


def test_caching_eval_and_loading_phases_with_throttled_progress():
    events = run("complete_run.log", LogParser(Schedule(epochs=2)))
    phases = of(events, "phase")
    caching = [p for p in phases if p.phase == "caching"]
    assert caching[0].message == "caching latents: /data/cats"
    assert any(p.message == "caching latents: 20/20 (100%)" and p.total == 20 for p in caching)
    assert sum("caching latents:" in p.message and "/20" in p.message for p in caching) <= 11
    assert any(p.message.startswith("[CACHE] latents") for p in caching)
    assert any(p.phase == "loading" and p.message.startswith("Loading checkpoint shards") for p in phases)
    evaluating = [p for p in phases if p.phase == "evaluating"]
    assert evaluating and evaluating[-1].message == "Evaluating: 9/9 (100%)"
    order = [p.phase for p in phases]
    assert order.index("evaluating") < order.index("training")
    evals = of(events, "eval")
    assert [(e.name, e.loss, e.step) for e in evals] == [("cats", pytest.approx(0.4172), 0)]


def test_schedule_lines_and_markers_become_log_events_with_levels():
    events = run("complete_run.log", LogParser(Schedule(epochs=2)))
    logs = {ev.message: ev.level for ev in of(events, "log")}
    assert logs["Global batch size = 4"] == "info"
    assert logs["Computed save_every_n_steps = 4"] == "info"
    assert logs["Started new epoch: 2"] == "info"
    assert any("Unable to find hostfile" in m and lvl == "warning" for m, lvl in logs.items())
    assert any("a fake error line" in m and lvl == "error" for m, lvl in logs.items())
    assert any("UserWarning" in m and lvl == "warning" for m, lvl in logs.items())
    assert not any("steps:" in m or "lr=[" in m or "%|" in m for m in logs)  # consumed, not echoed


def test_completion_ends_with_one_finished_event():
    events = run("complete_run.log", LogParser(Schedule(epochs=2)))
    terminal = [ev for ev in events if ev.kind in ("finished", "failed")]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    assert (terminal[0].reason, terminal[0].step, terminal[0].epoch) == ("completed", 8, 2)


def test_lr_line_after_the_steps_line_still_belongs_to_that_step():
    events = run("lr_after_steps.log", LogParser(Schedule(epochs=10)))
    steps = of(events, "step")
    assert [(s.step, s.lr) for s in steps] == [(1, 2e-05), (2, 4e-05), (3, 6e-05), (4, 8e-05), (5, 1e-04)]
    assert events[-1].kind == "finished" and events[-1].reason == "stopped"  # "Manually quitting"


def test_a_step_whose_lr_line_never_comes_is_written_after_a_while():
    now = [100.0]
    parser = LogParser(Schedule(initial_lr=3e-4), clock=lambda: now[0])
    assert not of(parser.feed("steps: 1 loss: 0.5 iter time (s): 1.0 samples/sec: 1.0"), "step")
    assert parser.tick() == []
    now[0] += STALE_STEP_S
    (step,) = parser.tick()
    assert (step.step, step.lr) == (1, 3e-4)  # the configured lr until DeepSpeed prints one


def test_nan_loss_is_an_error_with_the_fix_and_a_flag():
    parser = LogParser(Schedule(epochs=1))
    events = run("nan_loss.log", parser, exit_code=1)
    errors = [ev for ev in of(events, "log") if ev.level == "error"]
    assert len(errors) == 1 and "NaN at step 2" in errors[0].message and "learning rate" in errors[0].message
    assert parser.nan_seen and parser.nan_steps == 3
    assert [s.step for s in of(events, "step")] == [1]  # JSON cannot carry NaN losses


def test_traceback_fails_with_its_last_line_and_the_whole_traceback():
    parser = LogParser()
    events = run("traceback.log", parser, exit_code=1)
    failed = events[-1]
    assert failed.kind == "failed"
    assert failed.error.startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert failed.detail.startswith("Traceback (most recent call last):")
    assert "train_batch" in failed.detail and "KeyError" not in failed.detail  # the outer exception wins
    assert sum(ev.kind == "failed" for ev in events) == 1
    assert any(ev.kind == "log" and ev.level == "error" and "exits with return code = 1" in ev.message
               for ev in events)


def test_resume_keeps_the_epoch_and_max_steps_caps_the_total():
    parser = LogParser(Schedule(epochs=100, max_steps=30))
    events = run("resume_max_steps.log", parser)
    steps = of(events, "step")
    assert steps[0].step == 21 and steps[0].epoch == 3
    assert parser.steps_per_epoch == 5  # from epoch 4's start to epoch 5's; epoch 3 was entered mid-way
    assert steps[0].total_steps == 30 and steps[0].eta_s == pytest.approx(9 * 4.0)
    (save,) = of(events, "checkpoint")
    assert (save.path, save.step, save.epoch) == ("step30", 30, 5)
    assert events[-1].kind == "finished" and (events[-1].step, events[-1].epoch) == (30, 5)


def test_a_save_waits_for_its_folder_then_uses_the_given_path():
    ready = {"epoch1": False}
    parser = LogParser(Schedule(epochs=3), where=lambda name: (f"dp/run/{name}", ready[name]))
    parser.feed("steps: 1 loss: 0.5 iter time (s): 1.0 samples/sec: 1.0")
    parser.feed("Saving model to directory epoch1")
    assert not of(parser.tick(), "checkpoint")
    ready["epoch1"] = True
    (save,) = of(parser.tick(), "checkpoint")
    assert save.path == "dp/run/epoch1"
    forced = LogParser(Schedule(epochs=3))
    forced.feed("Saving model to directory epoch1")
    assert of(forced.feed("steps: 2 loss: 0.5 iter time (s): 1.0 samples/sec: 1.0"), "checkpoint")


def test_full_fine_tune_saves_are_models():
    parser = LogParser(Schedule(save_kind="model"))
    parser.feed("Saving model to directory epoch1")
    assert [c.what for c in of(parser.finish(0), "checkpoint")] == ["model"]


@pytest.mark.parametrize(("code", "stop", "expected"), [
    (1, False, "exited with code 1 without a final line"),
    (0, False, "exited with code 0 before printing TRAINING COMPLETE!"),
    (-15, True, None),
])
def test_exit_without_a_final_line(code, stop, expected):
    parser = LogParser()
    parser.feed("some output")
    (last,) = parser.finish(code, stop_requested=stop)
    if expected is None:
        assert last.kind == "finished" and last.reason == "stopped"
    else:
        assert last.kind == "failed" and expected in last.error and "some output" in last.detail


def test_line_cleaning_and_levels():
    assert clean_line("\x1b[32m[rank0]: steps: 1 loss: 0.1\x1b[0m  ") == "steps: 1 loss: 0.1"
    assert log_level("2026-01-01 | WARNING | x") == "warning"
    assert log_level("ERROR: bad") == "error"
    assert log_level("[DEBUG] x") == "debug"
    assert log_level("plain") == "info"


@pytest.mark.parametrize("lrs", ["np.float64(1e-06), np.float64(2e-06)", "1e-06, 2e-06", "1e-06"])
def test_lr_lists_in_every_print_style_give_the_first_group(lrs):
    parser = LogParser()
    parser.feed(f"[2026-01-01 00:00:00,000] [INFO] [logging.py:128:log_dist] [Rank 0] step=1, skipped=0, lr=[{lrs}], "
                "mom=[(0.9, 0.99)]")
    (step,) = of(parser.feed("steps: 1 loss: 0.25 iter time (s): 0.5 samples/sec: 2.0"), "step")
    assert step.lr == 1e-06 and step.it_per_s == 2.0
