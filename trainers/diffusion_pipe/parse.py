"""Turn diffusion-pipe's console output into typed events (pure: no files, no processes, no clock).

The lines matched are the ones diffusion-pipe and DeepSpeed really print (tests/golden/dp_logs cites the statement
behind each): per step, DeepSpeed's ``[Rank 0] step=N, skipped=0, lr=[...]`` (``lr=X`` without brackets under
``gradient_release``) and then ``steps: N loss: L iter time (s): T samples/sec: S``; ``Saving model to directory
epochN`` before ``Started new epoch: N+1``; ``Resuming training from checkpoint. Resuming at epoch: E, step: S``;
``TRAINING COMPLETE!``, ``Manually quitting``, ``Running eval``, the caching lines, tqdm bars, ``loss: nan`` and
Python tracebacks. DeepSpeed logs the lr after stepping the scheduler, so the lr on ``step=N`` is the one step N+1
trains with. Eval losses are never printed (they go to TensorBoard only: see ``tb_eval.py``). diffusion-pipe
prints neither steps per epoch nor total steps, so both are inferred from where ``Started new epoch: 2`` appears.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from trainers.events import (
    CheckpointEvent,
    Event,
    FailedEvent,
    FinishedEvent,
    LogEvent,
    Phase,
    PhaseEvent,
    StepEvent,
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")
_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"
_STEPS = re.compile(rf"steps:\s*(?P<step>\d+)\s+loss:\s*(?P<loss>{_NUM})\s+iter time \(s\):\s*(?P<t>{_NUM})"
                    rf"(?:\s+samples/sec:\s*(?P<sps>{_NUM}))?", re.IGNORECASE)
# DeepSpeed prints the list of group lrs (runtime/engine.py:3793); gradient_release runs print lr[0] bare
# (diffusion-pipe train.py:707).
_LR = re.compile(rf"\[Rank 0\]\s+step=(?P<step>\d+),\s*skipped=\d+,\s*lr=(?:\[(?P<lrs>[^\]]*)\]|(?P<lr>{_NUM}))",
                 re.IGNORECASE)
_FLOAT = re.compile(rf"(?<![\w.]){_NUM}", re.IGNORECASE)  # not the 64 of np.float64(1e-06)
_EPOCH = re.compile(r"Started new epoch:\s*(\d+)")
_SAVE = re.compile(r"Saving model to directory\s+\S*?(?P<name>(?:epoch|step)\d+)\b")
_RESUME = re.compile(r"Resuming at epoch:\s*(\d+),\s*step:\s*(\d+)")
_GBS = re.compile(r"Global batch size\s*=\s*(\d+)")
_BAR = re.compile(r"^(?P<desc>.*?):?\s*(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)")
# utils/dataset.py and utils/cache.py: what the caching pass prints (dataset.py:235-249, 417, 442, 556-563, 627-719,
# 900, 906; cache.py:40-93).
_CACHE = re.compile(r"^\s*caching (?:latents|text embeddings):|^\[CACHE\] |^Building iteration order$|"
                    r"^(?:Grouped|Intermediate) metadata is not cached|^Found grouped metadata cache|"
                    r"^Loading grouped metadata with grouping key|^(?:Saving|Loading) intermediate metadata dataset|"
                    r"^Caching ungrouped metadata")
# utils/dataset.py:528: more than 3 resolutions without --i_know_what_i_am_doing; diffusion-pipe then quit()s (exit 0).
_RESOLUTIONS = re.compile(r"^WARNING: You have set a lot of resolutions in the dataset config")
RESOLUTIONS_FIX = ("diffusion-pipe refused the dataset: it lists more than 3 resolutions, and each one trains on a "
                   "full copy of the dataset. Fix: use at most 3 resolutions, or set [studio] i_know_what_i_am_doing "
                   "= true to pass --i_know_what_i_am_doing")
_LEVELS = (("error", re.compile(r"\[(?:ERROR|CRITICAL)\]|^(?:ERROR|CRITICAL)\b|\|\s*(?:ERROR|CRITICAL)\s*\|")),
           ("warning", re.compile(r"\[WARN(?:ING)?\]|^WARN(?:ING)?\b|\|\s*WARNING\s*\||\w+Warning:")),
           ("debug", re.compile(r"\[DEBUG\]|^DEBUG\b|\|\s*DEBUG\s*\|")))
MAX_MESSAGE = 2000
NAN_REMINDER_EVERY = 100
NAN_FIX = ("lower the learning rate, check [model] dtype / transformer_dtype, or resume from an earlier "
           "checkpoint (diffusion-pipe issues #254, #531)")


@dataclass(frozen=True)
class Schedule:
    """What the config says about the run's length, used to infer totals and fill gaps."""

    epochs: int | None = None
    max_steps: int | None = None
    initial_lr: float = 0.0  # [optimizer] lr
    save_kind: str = "lora"  # 'model' for a full fine-tune (no [adapter] table)
    warmup_steps: int = 0
    lr_scheduler: str = "constant"
    force_constant_lr: float | None = None

    @classmethod
    def of(cls, data: dict, max_steps: int | None = None) -> Schedule:
        """From the main config: length, lr schedule (train.py:849-896) and what a save holds."""
        optimizer = data.get("optimizer") if isinstance(data.get("optimizer"), dict) else {}
        force = data.get("force_constant_lr")
        return cls(epochs=data.get("epochs"), max_steps=max_steps or data.get("max_steps"),
                   initial_lr=float(optimizer.get("lr", 0.0) or 0.0), save_kind="lora" if data.get("adapter") else "model",
                   warmup_steps=int(data.get("warmup_steps", 0) or 0), lr_scheduler=str(data.get("lr_scheduler", "constant")),
                   force_constant_lr=float(force) if isinstance(force, int | float) else None)

    def lr_at(self, step: int) -> float | None:
        """The lr optimizer step ``step`` trains with, where the config alone decides it; None where it depends on
        the run's length (linear and cosine decay after the first step). diffusion-pipe train.py:849-862: a warmup of
        W steps is torch's LinearLR from lr/W to lr, then the scheduler starts from lr; ``force_constant_lr``
        (train.py:893-896) replaces both."""
        if self.force_constant_lr is not None:
            return self.force_constant_lr
        w = self.warmup_steps
        if w > 0 and step <= w:
            return self.initial_lr * (1 / w + (1 - 1 / w) * (step - 1) / w)
        if self.lr_scheduler == "constant" or step == w + 1:
            return self.initial_lr
        return None


def clean_line(raw: str) -> str:
    """A console line without colour codes, torch's ``[rankN]:`` prefix or trailing whitespace."""
    return _RANK_PREFIX.sub("", _ANSI.sub("", raw)).rstrip()


def log_level(line: str) -> str:
    """'error' | 'warning' | 'debug' | 'info' from the markers loggers put in a line."""
    for level, pattern in _LEVELS:
        if pattern.search(line):
            return level
    return "info"


def _float(text: str) -> float:
    return float(text.lower())


def _bar_phase(desc: str, phase: Phase | None, step: int) -> Phase | None:
    """Which phase a tqdm bar reports on: eval bars after ``Running eval``; before the first step, model loading
    (``Loading checkpoint shards``) or caching; during training, none."""
    if phase == "evaluating":
        return "evaluating"
    if step:
        return None
    return "loading" if desc.lower().startswith("loading") else "caching"


class LogParser:
    """Feed it console lines; it returns the events they mean. One instance per run.

    ``where(name)`` maps a save folder name (``epoch3``) to ``(path relative to the run folder, ready)``;
    a CheckpointEvent is written once the folder is ready, or when the next training line arrives.
    """

    def __init__(self, schedule: Schedule | None = None, *,
                 where: Callable[[str], tuple[str, bool]] | None = None):
        self.schedule = schedule or Schedule()
        self.where = where or (lambda name: (name, False))
        self.step, self.epoch = 0, 1
        self._lr_for: dict[int, float] = {}  # step -> the lr it trains with, from DeepSpeed's line of the step before
        self.epoch_starts: dict[int, int] = {1: 0}
        self.steps_per_epoch: int | None = None
        self.iter_time: float | None = None
        self.global_batch: int | None = None
        self.phase: Phase | None = None
        self.completed = self.quit = False
        self.nan_steps = 0
        self.failure: FailedEvent | None = None
        self.tail: deque[str] = deque(maxlen=40)
        self._saves: list[str] = []
        self._traceback: list[str] | None = None
        self._bar: tuple[str, str, int] | None = None

    # ---- public ---------------------------------------------------------------------------------
    @property
    def nan_seen(self) -> bool:
        return self.nan_steps > 0

    def feed(self, raw: str) -> list[Event]:
        """Events meant by one console line (never a terminal event: see ``finish``)."""
        line = clean_line(raw)
        out: list[Event] = []
        if self._in_traceback(line, out) or not line.strip():
            return out
        self.tail.append(line)
        for handler in self._handlers():
            if handler(line, out):
                return out
        out.append(LogEvent(level=log_level(line), message=line[:MAX_MESSAGE]))
        return out

    def tick(self) -> list[Event]:
        """Housekeeping between lines: saves whose folder is ready."""
        out: list[Event] = []
        self._flush_saves(out, force=False)
        return out

    def finish(self, exit_code: int, *, stop_requested: bool = False) -> list[Event]:
        """The last events once the process has exited, ending with exactly one finished or failed event."""
        out: list[Event] = []
        if self._traceback:
            self._close_traceback(out)
        self._flush_saves(out, force=True)
        epoch = min(self.epoch, self.schedule.epochs) if self.schedule.epochs else self.epoch
        if self.completed:
            out.append(FinishedEvent(step=self.step, epoch=epoch, reason="completed"))
        elif self.quit or stop_requested:
            out.append(FinishedEvent(step=self.step, epoch=epoch, reason="stopped"))
        elif self.failure is not None:
            out.append(self.failure)
        else:
            tail = "\n".join(list(self.tail)[-20:])
            what = "exited with code 0 before printing TRAINING COMPLETE!" if exit_code == 0 else (
                f"exited with code {exit_code} without a final line")
            out.append(FailedEvent(error=f"diffusion-pipe {what}; see the last lines of its output (stdout.log)",
                                   detail=tail))
        return out

    def epoch_of(self, step: int) -> int:
        """The epoch ``step`` belongs to (an eval at the end of epoch N comes after ``Started new epoch: N+1``)."""
        started = [epoch for epoch, start in self.epoch_starts.items() if start < step]
        return max(started) if started else (1 if step == 0 else self.epoch)

    def total_steps(self) -> int | None:
        """Total optimizer steps: epochs × inferred steps per epoch, capped by max_steps."""
        s = self.schedule
        by_epochs = s.epochs * self.steps_per_epoch if s.epochs and self.steps_per_epoch else None
        known = [v for v in (by_epochs, s.max_steps) if v]
        return min(known) if known else None

    # ---- line handlers --------------------------------------------------------------------------
    def _handlers(self) -> tuple[Callable[[str, list[Event]], bool], ...]:
        return (self._on_lr, self._on_steps, self._on_epoch, self._on_save, self._on_markers, self._on_bar,
                self._on_cache, self._on_refusal)

    def _on_lr(self, line: str, out: list[Event]) -> bool:
        m = _LR.search(line)
        if not m:
            return False
        first = _FLOAT.search(m["lrs"]) if m["lrs"] is not None else None
        text = m["lr"] or (first.group() if first else None)
        if text and math.isfinite(lr := _float(text)):
            # DeepSpeed steps the scheduler before it logs (runtime/engine.py:3545 then :3555): this is step N+1's lr.
            self._lr_for[int(m["step"]) + 1] = lr
        return True

    def lr_of(self, step: int) -> float:
        """The lr ``step`` trained with: from DeepSpeed's line of an earlier step (the newest one, when
        steps_per_print > 1), else from the config (the first step, or the first after a resume), else, for a decaying
        schedule resumed mid-way, from the step's own line (the next step's lr, the nearest known)."""
        earlier = [s for s in self._lr_for if s <= step]
        if earlier:
            return self._lr_for[max(earlier)]
        exact = self.schedule.lr_at(step)
        if exact is not None:
            return exact
        return self._lr_for.get(step + 1, self.schedule.initial_lr)

    def _on_steps(self, line: str, out: list[Event]) -> bool:
        m = _STEPS.search(line)
        if not m or int(m["step"]) < 1:
            return False
        self._flush_saves(out, force=True)
        self.step = int(m["step"])
        self._set_phase("training", out, total=self.total_steps())
        loss, iter_s = _float(m["loss"]), _float(m["t"])
        if iter_s > 0 and math.isfinite(iter_s):
            self.iter_time = iter_s if self.iter_time is None else 0.8 * self.iter_time + 0.2 * iter_s
        lr = self.lr_of(self.step)
        self._lr_for = {s: v for s, v in self._lr_for.items() if s > self.step}
        if not math.isfinite(loss):
            self._on_nan(line, out)
            return True
        sps = _float(m["sps"]) if m["sps"] else None
        total = self.total_steps()
        eta = max(total - self.step, 0) * self.iter_time if total and self.iter_time else None
        out.append(StepEvent(step=self.step, epoch=self.epoch, loss=loss, lr=lr,
                             it_per_s=1.0 / iter_s if iter_s > 0 and math.isfinite(iter_s) else None,
                             samples_per_s=sps if sps and math.isfinite(sps) else None, total_steps=total, eta_s=eta))
        return True

    def _on_nan(self, line: str, out: list[Event]) -> None:
        # JSON cannot carry NaN, so a NaN step is reported as an error line rather than a step event.
        self.nan_steps += 1
        if self.nan_steps == 1 or self.nan_steps % NAN_REMINDER_EVERY == 0:
            out.append(LogEvent(level="error", message=f"loss is NaN at step {self.step} ({self.nan_steps} NaN "
                                                       f"step(s) so far): training has diverged; {NAN_FIX}. Line: {line}"))

    def _on_epoch(self, line: str, out: list[Event]) -> bool:
        m = _EPOCH.search(line)
        if not m:
            return False
        new = int(m.group(1))
        self.epoch_starts[new] = self.step
        start = self.epoch_starts.get(new - 1)
        if self.steps_per_epoch is None and start is not None and self.step > start:
            self.steps_per_epoch = self.step - start
            total = self.total_steps()
            out.append(LogEvent(message=f"inferred {self.steps_per_epoch} steps per epoch"
                                        + (f"; {total} steps in total" if total else "")))
        self.epoch = new
        out.append(LogEvent(message=line))
        return True

    def _on_save(self, line: str, out: list[Event]) -> bool:
        m = _SAVE.search(line)
        if not m:
            return False
        self._saves.append(m["name"])
        self._set_phase("saving", out, message=m["name"])
        return True

    def _on_markers(self, line: str, out: list[Event]) -> bool:
        if "TRAINING COMPLETE!" in line or "Manually quitting" in line:
            self._flush_saves(out, force=True)
            self.completed = self.completed or "TRAINING COMPLETE!" in line
            self.quit = self.quit or "Manually quitting" in line
        elif m := _RESUME.search(line):
            self.epoch, self.step = int(m.group(1)), max(int(m.group(2)) - 1, 0)
            self.epoch_starts.clear()  # where the resumed epoch began is unknown
        elif m := _GBS.search(line):
            self.global_batch = int(m.group(1))
        elif "Running eval" in line:
            self._set_phase("evaluating", out)
            return True
        elif not line.lstrip().startswith("Computed "):
            return False
        out.append(LogEvent(message=line[:MAX_MESSAGE]))
        return True

    def _on_bar(self, line: str, out: list[Event]) -> bool:
        m = _BAR.search(line)
        if not m:
            return False
        desc = m["desc"].strip()
        phase = _bar_phase(desc, self.phase, self.step)
        if phase is None:
            return True  # a progress bar during training: nothing to report
        desc, pct, done, total = desc or phase, int(m["pct"]), int(m["done"]), int(m["total"])
        last = self._bar
        if last and last[:2] == (phase, desc) and pct - last[2] < 10 and done != total:
            return True  # throttled: one event per 10 % of a bar
        self._bar = (phase, desc, pct)
        out.append(PhaseEvent(phase=phase, message=f"{desc}: {done}/{total} ({pct}%)", total=total, done=done))
        self.phase = phase
        return True

    def _on_cache(self, line: str, out: list[Event]) -> bool:
        if not _CACHE.search(line):
            return False
        self.phase = "caching"
        out.append(PhaseEvent(phase="caching", message=line[:MAX_MESSAGE]))
        return True

    def _on_refusal(self, line: str, out: list[Event]) -> bool:
        if not _RESOLUTIONS.search(line):
            return False
        self.failure = FailedEvent(error=RESOLUTIONS_FIX, detail=line)
        out.append(LogEvent(level="error", message=line[:MAX_MESSAGE]))
        return True

    # ---- helpers --------------------------------------------------------------------------------
    def _set_phase(self, phase: Phase, out: list[Event], *, message: str = "", total: int | None = None) -> None:
        if self.phase != phase:
            self.phase = phase
            out.append(PhaseEvent(phase=phase, message=message, total=total))

    def _flush_saves(self, out: list[Event], *, force: bool) -> None:
        waiting: list[str] = []
        for name in self._saves:
            path, ready = self.where(name)
            if not (ready or force):
                waiting.append(name)
                continue
            number = int(name.removeprefix("epoch").removeprefix("step"))
            step, epoch = (self.step, number) if name.startswith("epoch") else (number, self.epoch)
            out.append(CheckpointEvent(step=step, epoch=max(epoch, 1), path=path, what=self.schedule.save_kind))
        self._saves = waiting

    def _in_traceback(self, line: str, out: list[Event]) -> bool:
        """Collect ``Traceback (most recent call last):`` up to its unindented last line."""
        if line.startswith("Traceback (most recent call last):"):
            self._traceback = [line]
            return True
        if self._traceback is None:
            return False
        self._traceback.append(line)
        if not line.strip() or line[0].isspace():
            return True
        self._close_traceback(out)
        return True

    def _close_traceback(self, out: list[Event]) -> None:
        lines, self._traceback = self._traceback or [], None
        last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "unknown error")
        self.tail.extend(lines)
        self.failure = FailedEvent(error=last[:MAX_MESSAGE], detail="\n".join(lines))
        out.append(LogEvent(level="error", message=f"diffusion-pipe raised {last[:MAX_MESSAGE]}"))
