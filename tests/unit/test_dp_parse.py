"""The diffusion-pipe console parser on golden logs (tests/golden/dp_logs: the lines diffusion-pipe and DeepSpeed
print, each citing its source): steps with the lr they trained with, epochs and ETA, saves, caching and eval phases,
gradient_release's lr form, NaN, tracebacks, the >3-resolutions refusal, endings."""

from __future__ import annotations

import re

import pytest

from tests.dp_golden import GOLDEN, cited_lines, pieces
from trainers.diffusion_pipe.parse import RESOLUTIONS_FIX, LogParser, Schedule, clean_line, log_level

LR = 1e-4
WARM = Schedule(epochs=2, initial_lr=LR, warmup_steps=2)  # complete_run.log's config


def run(name: str, parser: LogParser, exit_code: int = 0, **finish) -> list:
    events = [ev for _cite, line in cited_lines(name) for piece in pieces(line) for ev in parser.feed(piece)]
    return events + parser.finish(exit_code, **finish)


def of(events, kind):
    return [ev for ev in events if ev.kind == kind]


def test_every_golden_line_cites_the_statement_that_prints_it():
    for path in sorted(GOLDEN.glob("*.log")):
        pairs = cited_lines(path.name)
        assert pairs, path
        for cite, line in pairs:
            assert cite and (re.search(r"\w\.py:\d+", cite) or "traceback" in cite), (path.name, line)


def test_each_step_gets_the_lr_deepspeed_printed_on_the_step_before():
    # DeepSpeed steps the scheduler, then logs (runtime/engine.py:3545, :3555): the lr on "step=N" is step N+1's.
    # Warmup 2 from lr 1e-4 (diffusion-pipe train.py:858-861, torch LinearLR from 1/2): 5e-05, 7.5e-05, then 1e-4.
    steps = of(run("complete_run.log", LogParser(WARM)), "step")
    assert [s.step for s in steps] == list(range(1, 9))
    assert [s.lr for s in steps] == pytest.approx([5e-05, 7.5e-05] + [LR] * 6)
    assert [s.epoch for s in steps] == [1] * 4 + [2] * 4
    assert steps[0].loss == pytest.approx(0.4013)
    assert steps[0].it_per_s == pytest.approx(0.5) and steps[0].samples_per_s == pytest.approx(1.0)


def test_gradient_release_prints_the_lr_without_brackets():
    # diffusion-pipe train.py:707 logs lr[0] bare; same warmup as above.
    parser = LogParser(Schedule(initial_lr=LR, warmup_steps=2))
    events = run("gradient_release.log", parser)
    assert [s.lr for s in of(events, "step")] == pytest.approx([5e-05, 7.5e-05, LR, LR, LR])
    assert not any("lr=" in ev.message for ev in of(events, "log"))  # consumed, not echoed


def test_with_steps_per_print_above_one_the_newest_known_lr_is_used():
    parser = LogParser(Schedule(initial_lr=1.0))
    for step, nxt in ((2, 0.75), (4, 0.5)):
        parser.feed(f"[2026-07-30 09:16:11,137] [INFO] [logging.py:123:log_dist] [Rank 0] step={step}, skipped=0, "
                    f"lr=[{nxt}], mom=[(0.9, 0.99)]")
        (ev,) = of(parser.feed(f"steps: {step} loss: 0.5 iter time (s): 1.0 samples/sec: 1.0"), "step")
        assert ev.lr == (1.0 if step == 2 else 0.75)  # step 4 trained with the lr printed after step 2 (step 3's)


def test_a_resumed_decaying_schedule_falls_back_to_the_steps_own_line():
    parser = LogParser(Schedule(initial_lr=LR, lr_scheduler="cosine"))
    parser.feed("Resuming training from checkpoint. Resuming at epoch: 3, step: 51")
    lrs = []
    for step, nxt in ((51, 9e-05), (52, 8e-05)):
        parser.feed(f"[2026-07-30 09:16:11,137] [INFO] [logging.py:123:log_dist] [Rank 0] step={step}, skipped=0, "
                    f"lr=[{nxt}], mom=[(0.9, 0.99)]")
        lrs += [ev.lr for ev in of(parser.feed(f"steps: {step} loss: 0.5 iter time (s): 1.0 samples/sec: 1.0"), "step")]
    assert lrs == [9e-05, 9e-05]  # step 51: the nearest known (cosine depends on the run length); 52: exact


def test_schedule_lr_at_follows_train_py():
    warm = Schedule(initial_lr=2e-4, warmup_steps=3)
    # torch LinearLR(start_factor=1/3, total_iters=3) then ConstantLR: 6.667e-05, 1.111e-04, 1.556e-04, 2e-04.
    assert [warm.lr_at(s) for s in (1, 2, 3, 4, 9)] == pytest.approx([2e-4 / 3, 2e-4 * 5 / 9, 2e-4 * 7 / 9, 2e-4, 2e-4])
    linear = Schedule(initial_lr=1e-4, lr_scheduler="linear", warmup_steps=2)
    assert (linear.lr_at(3), linear.lr_at(4)) == (1e-4, None)
    assert Schedule(initial_lr=1e-4, force_constant_lr=3e-5).lr_at(1) == 3e-5
    data = {"epochs": 3, "warmup_steps": 5, "lr_scheduler": "cosine", "optimizer": {"lr": 2e-4}, "adapter": {}}
    assert Schedule.of(data) == Schedule(epochs=3, initial_lr=2e-4, warmup_steps=5, lr_scheduler="cosine",
                                         save_kind="model")  # an empty [adapter] table is no adapter


def test_steps_per_epoch_is_inferred_at_epoch_two_and_gives_total_and_eta():
    parser = LogParser(WARM)
    steps = of(run("complete_run.log", parser), "step")
    assert parser.steps_per_epoch == 4
    assert [s.total_steps for s in steps[:4]] == [None] * 4  # not printed by diffusion-pipe, not yet known
    assert steps[4].total_steps == 8
    assert steps[4].eta_s == pytest.approx((8 - 5) * 2.0)
    assert steps[-1].eta_s == 0


def test_epoch_saves_printed_before_the_new_epoch_belong_to_the_epoch_that_ended():
    events = run("complete_run.log", LogParser(WARM))
    saves = of(events, "checkpoint")
    assert [(c.path, c.epoch, c.step, c.what) for c in saves] == [("epoch1", 1, 4, "lora"), ("epoch2", 2, 8, "lora")]
    assert any(ev.kind == "phase" and ev.phase == "saving" and ev.message == "epoch1" for ev in events)


def test_caching_and_eval_phases_with_throttled_progress():
    events = run("complete_run.log", LogParser(WARM))
    phases = of(events, "phase")
    caching = [p for p in phases if p.phase == "caching"]
    assert caching[0].message.startswith("Grouped metadata is not cached")  # utils/dataset.py:556 starts caching
    assert any(p.message == "caching latents: /data/cats" for p in caching)
    assert any(p.message == "[CACHE] Storing new fingerprint: 6b2f0c9e41d7a385" for p in caching)
    assert any(p.message == "caching: 8/8 (100%)" and p.total == p.done == 8 for p in caching)
    evaluating = [p for p in phases if p.phase == "evaluating"]
    assert evaluating and evaluating[-1].message == "evaluating: 9/9 (100%)"
    order = [p.phase for p in phases]
    assert order.index("caching") < order.index("evaluating") < order.index("training")
    assert order.count("evaluating") >= 3  # before the first step and after each epoch
    assert not of(events, "eval")  # eval losses only reach TensorBoard (see test_dp_tensorboard.py)


def test_other_lines_become_log_events_with_levels():
    events = run("complete_run.log", LogParser(WARM))
    logs = {ev.message: ev.level for ev in of(events, "log")}
    assert logs["Global batch size = 2"] == "info"
    assert logs["Started new epoch: 2"] == "info"
    assert any("Unable to find hostfile" in m and lvl == "warning" for m, lvl in logs.items())
    assert any("Saving model checkpoint:" in m and lvl == "info" for m, lvl in logs.items())
    assert not any("steps:" in m or "lr=[" in m or "%|" in m or "[CACHE]" in m for m in logs)  # consumed


def test_completion_ends_with_one_finished_event():
    events = run("complete_run.log", LogParser(WARM))
    terminal = [ev for ev in events if ev.kind in ("finished", "failed")]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    assert (terminal[0].reason, terminal[0].step, terminal[0].epoch) == ("completed", 8, 2)


def test_nan_loss_is_an_error_with_the_fix_and_a_flag():
    parser = LogParser(Schedule(epochs=1))
    events = run("nan_loss.log", parser, exit_code=1)
    errors = [ev for ev in of(events, "log") if ev.level == "error"]
    assert len(errors) == 1 and "NaN at step 2" in errors[0].message and "learning rate" in errors[0].message
    assert parser.nan_seen and parser.nan_steps == 3
    assert [s.step for s in of(events, "step")] == [1]  # JSON cannot carry NaN losses


def test_traceback_fails_with_its_last_line_and_the_whole_traceback():
    events = run("traceback.log", LogParser(), exit_code=1)
    failed = events[-1]
    assert failed.kind == "failed"
    assert failed.error.startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert failed.detail.startswith("Traceback (most recent call last):") and "train_batch" in failed.detail
    assert sum(ev.kind == "failed" for ev in events) == 1
    assert any(ev.kind == "log" and ev.level == "error" and "exits with return code = 1" in ev.message
               for ev in events)


def test_more_than_three_resolutions_fails_with_the_studio_key_to_set():
    # utils/dataset.py:524-531 prints a warning and quit()s: exit code 0 without "TRAINING COMPLETE!".
    events = run("too_many_resolutions.log", LogParser(), exit_code=0)
    assert events[-1].kind == "failed" and events[-1].error == RESOLUTIONS_FIX
    assert "[studio] i_know_what_i_am_doing = true" in events[-1].error
    assert "--i_know_what_i_am_doing flag" in events[-1].detail


def test_resume_keeps_the_epoch_and_max_steps_caps_the_total():
    parser = LogParser(Schedule(epochs=100, max_steps=27, initial_lr=5e-05))
    events = run("resume_max_steps.log", parser)
    steps = of(events, "step")
    assert (steps[0].step, steps[0].epoch, steps[0].lr) == (19, 4, 5e-05)
    assert parser.steps_per_epoch == 5  # from epoch 5's start to epoch 6's; epoch 4 was entered before the resume
    assert steps[-1].total_steps == 27
    saves = [(c.path, c.step, c.epoch) for c in of(events, "checkpoint")]
    assert saves == [("epoch4", 20, 4), ("epoch5", 25, 5), ("step27", 27, 6)]
    assert events[-1].kind == "finished" and (events[-1].step, events[-1].epoch) == (27, 6)


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


def test_line_cleaning_levels_and_a_model_loading_bar():
    assert clean_line("\x1b[32m[rank0]: steps: 1 loss: 0.1\x1b[0m  ") == "steps: 1 loss: 0.1"
    assert log_level("2026-01-01 | WARNING | x") == "warning"
    assert log_level("ERROR: bad") == "error"
    assert log_level("[DEBUG] x") == "debug"
    assert log_level("plain") == "info"
    (phase,) = LogParser().feed("Loading checkpoint shards: 100%|██████████| 2/2 [00:03<00:00,  1.52s/it]")
    assert (phase.phase, phase.message) == ("loading", "Loading checkpoint shards: 2/2 (100%)")


@pytest.mark.parametrize("lrs", ["np.float64(1e-06), np.float64(2e-06)", "1e-06, 2e-06", "1e-06"])
def test_lr_lists_in_every_print_style_give_the_first_group(lrs):
    parser = LogParser()
    parser.feed(f"[2026-01-01 00:00:00,000] [INFO] [logging.py:123:log_dist] [Rank 0] step=1, skipped=0, lr=[{lrs}], "
                "mom=[(0.9, 0.99)]")
    parser.feed("steps: 1 loss: 0.25 iter time (s): 0.5 samples/sec: 2.0")
    (step,) = of(parser.feed("steps: 2 loss: 0.25 iter time (s): 0.5 samples/sec: 2.0"), "step")
    assert step.lr == 1e-06 and step.it_per_s == 2.0
