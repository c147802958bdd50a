"""Pure view logic for the studio: events in, figures and texts out. No Gradio, no torch.

``MonitorState`` folds a run's events (in order) into what the live monitor shows; the ``render_*``
functions turn it into a plotly figure, gallery items and texts. Everything here is unit-tested.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import plotly.graph_objects as go

from trainers.events import Event

LOG_TAIL_LINES = 200


class Sample(NamedTuple):
    """One preview image of a run, as the gallery and the grids use it."""

    step: int
    path: str  # absolute path
    prompt: str
    seed: int
    epoch: int = 0
    index: int = 0
    source: str = "live"  # "live" (rendered by the trainer) or "sidecar" (rendered later from a saved LoRA)


class EvalPoint(NamedTuple):
    """One evaluation of one eval set: mean loss and the loss at each timestep quantile."""

    step: int
    loss: float
    quantiles: dict[str, float]


@dataclass
class MonitorState:
    """Everything the monitor needs, accumulated from events."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    grad_steps: list[int] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    evals: dict[str, list[EvalPoint]] = field(default_factory=dict)  # eval set name -> points in order
    epoch: int = 0
    total_steps: int | None = None
    it_per_s: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    phase: str = "waiting"
    phase_message: str = ""
    phase_done: int | None = None  # progress within the phase (items cached, previews rendered), when reported
    phase_total: int | None = None
    samples: list[Sample] = field(default_factory=list)
    saves: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    outcome: str | None = None  # "completed" | "stopped" | "failed: ..."

    def apply(self, ev: Event, run_dir: Path) -> None:
        """Fold one event into the state (kinds it does not know are skipped)."""
        handler = getattr(self, f"_on_{getattr(ev, 'kind', '')}", None)
        if handler is not None:
            handler(ev, run_dir)

    def _on_phase(self, ev, run_dir: Path) -> None:
        progress = getattr(ev, "done", None) is not None
        if not (progress and ev.phase == self.phase):  # progress within a phase is shown, not logged
            self._log("info", f"phase: {ev.phase}" + (f" ({ev.message})" if ev.message else ""))
        self.phase, self.phase_message = ev.phase, ev.message
        self.phase_done = ev.done if progress else None
        self.phase_total = ev.total if progress else None

    def _on_step(self, ev, run_dir: Path) -> None:
        self.steps.append(ev.step)
        self.losses.append(ev.loss)
        self.lrs.append(ev.lr)
        if ev.grad_norm is not None and math.isfinite(ev.grad_norm):
            self.grad_steps.append(ev.step)
            self.grad_norms.append(ev.grad_norm)
        self.epoch, self.total_steps = ev.epoch, ev.total_steps or self.total_steps
        self.it_per_s, self.samples_per_s, self.eta_s = ev.it_per_s, ev.samples_per_s, ev.eta_s

    def _on_sample(self, ev, run_dir: Path) -> None:
        path = str(run_dir / ev.path)
        # The same file written again (a sidecar render repeated, a resumed run re-sampling a step) replaces
        # the older entry: the file on disk is the new picture.
        self.samples = [s for s in self.samples if s.path != path]
        self.samples.append(Sample(ev.step, path, ev.prompt, ev.seed, ev.epoch, ev.index,
                                   getattr(ev, "source", "live")))

    def _on_checkpoint(self, ev, run_dir: Path) -> None:
        self.saves.append(ev.path)
        self._log("info", f"saved {ev.what} to {ev.path} (step {ev.step}, epoch {ev.epoch})")

    def _on_eval(self, ev, run_dir: Path) -> None:
        self.evals.setdefault(ev.name, []).append(EvalPoint(ev.step, ev.loss, dict(ev.quantiles)))
        self._log("info", f"eval {ev.name}: loss {ev.loss:.4f}")

    def _on_resumed(self, ev, run_dir: Path) -> None:
        """The trainer restarted from a checkpoint at ``ev.step``: what it had done after that step is
        replaced by what comes next, so the charts must not show the old tail twice."""
        cut = ev.step
        kept = [i for i, step in enumerate(self.steps) if step <= cut]
        self.steps = [self.steps[i] for i in kept]
        self.losses = [self.losses[i] for i in kept]
        self.lrs = [self.lrs[i] for i in kept]
        grads = [(s, g) for s, g in zip(self.grad_steps, self.grad_norms, strict=True) if s <= cut]
        self.grad_steps, self.grad_norms = [s for s, _ in grads], [g for _, g in grads]
        self.evals = {name: kept_points for name, points in self.evals.items()
                      if (kept_points := [p for p in points if p.step <= cut])}
        self.samples = [s for s in self.samples if s.step <= cut]
        self.epoch = ev.epoch
        # A new leg: the previous leg's end ("stopped", "failed: ...") no longer describes the run.
        self.outcome, self.phase, self.eta_s = None, "resuming", None
        self._log("info", f"resumed from {getattr(ev, 'checkpoint', '') or 'a checkpoint'} at step {cut}")

    def _on_log(self, ev, run_dir: Path) -> None:
        self._log(ev.level, ev.message)

    def _on_finished(self, ev, run_dir: Path) -> None:
        self.outcome, self.phase = ev.reason, "finished"
        self._log("info", f"run {ev.reason} at step {ev.step}")

    def _on_failed(self, ev, run_dir: Path) -> None:
        self.outcome, self.phase = f"failed: {ev.error}", "finished"
        self._log("error", f"run failed: {ev.error}")

    def _log(self, level: str, message: str) -> None:
        self.logs.append(f"[{level.upper()}] {message}")
        if len(self.logs) > LOG_TAIL_LINES * 2:
            del self.logs[: len(self.logs) - LOG_TAIL_LINES]


def fold(events: list[Event], run_dir: Path, state: MonitorState | None = None) -> MonitorState:
    """Apply ``events`` in order to ``state`` (a new one when None) and return it."""
    state = state or MonitorState()
    for ev in events:
        state.apply(ev, run_dir)
    return state


def ema(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average, bias-corrected so the first points are not pulled toward 0."""
    out: list[float] = []
    avg, weight = 0.0, 0.0
    for v in values:
        if not math.isfinite(v):
            out.append(out[-1] if out else v)
            continue
        avg = alpha * avg + (1 - alpha) * v
        weight = alpha * weight + (1 - alpha)
        out.append(avg / weight)
    return out


MAX_PLOT_POINTS = 1500


def thin(xs: list, ys: list, limit: int = MAX_PLOT_POINTS) -> tuple[list, list]:
    """At most about ``limit`` points, evenly strided, always keeping the newest one.

    A long run has tens of thousands of steps; the browser needs a few thousand points to draw the
    same curve, and every update ships the whole figure.
    """
    if len(xs) <= limit:
        return xs, ys
    stride = -(-len(xs) // limit)
    idx = list(range(0, len(xs), stride))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


def series(xs: list, ys: list, limit: int = MAX_PLOT_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """:func:`thin`, as float arrays: plotly checks a list element by element, an array at once."""
    xs, ys = thin(xs, ys, limit)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def loss_figure(state: MonitorState, smoothing: float = 0.9, log_y: bool = False) -> go.Figure:
    """Raw and EMA-smoothed loss against the step (log scale on request)."""
    fig = go.Figure()
    xs, ys = series(state.steps, state.losses)
    fig.add_scatter(x=xs, y=ys, mode="lines", name="loss",
                    line={"width": 1, "color": "rgba(99,110,250,0.35)"})
    if state.losses:
        xs, ys = series(state.steps, ema(state.losses, smoothing))
        fig.add_scatter(x=xs, y=ys, mode="lines",
                        name=f"EMA {smoothing:g}", line={"width": 2, "color": "rgb(99,110,250)"})
    fig.update_layout(height=300, margin={"l": 40, "r": 10, "t": 30, "b": 30}, title="loss",
                      xaxis_title="step", legend={"orientation": "h", "y": -0.25}, uirevision="loss",
                      yaxis_type="log" if log_y else "linear")
    return fig


def lr_figure(state: MonitorState) -> go.Figure:
    """The learning rate the optimizer actually used at each step (warmup and schedule visible)."""
    fig = go.Figure()
    xs, ys = series(state.steps, state.lrs)
    fig.add_scatter(x=xs, y=ys, mode="lines", name="lr", line={"width": 2, "color": "#EF553B"})
    fig.update_layout(height=300, margin={"l": 50, "r": 10, "t": 30, "b": 30}, title="learning rate",
                      xaxis_title="step", uirevision="lr", yaxis_exponentformat="e")
    return fig


EVAL_COLOURS = ("#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880")


def has_evals(state: MonitorState) -> bool:
    """Whether there is any eval loss to chart."""
    return any(state.evals.values())


def _quantile_order(key: str) -> tuple[float, str]:
    try:
        return float(key), key
    except ValueError:
        return math.inf, key


def eval_figure(state: MonitorState) -> go.Figure:
    """Eval loss per eval set: the mean as a solid line with markers, each timestep quantile as a faint
    dotted line (one legend entry per set toggles all its quantiles)."""
    fig = go.Figure()
    for i, (name, points) in enumerate(sorted(state.evals.items())):
        colour = EVAL_COLOURS[i % len(EVAL_COLOURS)]
        fig.add_scatter(x=[p.step for p in points], y=[p.loss for p in points], mode="lines+markers",
                        name=f"{name} loss", line={"width": 2, "color": colour})
        keys = sorted({k for p in points for k in p.quantiles}, key=_quantile_order)
        for j, key in enumerate(keys):
            have = [p for p in points if key in p.quantiles]
            fig.add_scatter(x=[p.step for p in have], y=[p.quantiles[key] for p in have], mode="lines",
                            name=f"{name} quantiles", legendgroup=f"{name}-q", showlegend=j == 0,
                            hovertemplate=f"t-quantile {key}: %{{y:.4g}}<extra>{name}</extra>",
                            line={"width": 1, "dash": "dot", "color": colour}, opacity=0.45)
    fig.update_layout(height=300, margin={"l": 40, "r": 10, "t": 30, "b": 30}, title="eval loss",
                      xaxis_title="step", legend={"orientation": "h", "y": -0.25}, uirevision="eval")
    return fig


def grad_norm_figure(state: MonitorState) -> go.Figure:
    """The gradient norm before clipping at each step (spikes show instability)."""
    fig = go.Figure()
    xs, ys = series(state.grad_steps, state.grad_norms)
    fig.add_scatter(x=xs, y=ys, mode="lines", name="grad norm", line={"width": 1, "color": "#636EFA"})
    fig.update_layout(height=300, margin={"l": 40, "r": 10, "t": 30, "b": 30}, title="gradient norm",
                      xaxis_title="step", uirevision="grad")
    return fig


def sample_steps(state: MonitorState) -> list[int]:
    """The steps that have preview images, in order."""
    return sorted({s.step for s in state.samples})


def nearest_sample_step(steps: list[int], wanted: float | None) -> int | None:
    """The sample step closest to ``wanted`` (the earlier one on a tie); None for "all steps" (0 or None)."""
    if not steps or not wanted:
        return None
    return min(steps, key=lambda s: (abs(s - wanted), s))


def _caption(s: Sample) -> str:
    where = f"step {s.step}" + (" (sidecar)" if s.source == "sidecar" else "")
    return f"{where} · seed {s.seed} · {s.prompt}"


def gallery_items(state: MonitorState, step: float | None = None, limit: int = 48) -> list[tuple[str, str]]:
    """Previews grouped by step, newest step first, captioned with step, seed and prompt. With ``step``
    (a slider position), only the images of the sample step nearest to it."""
    chosen = nearest_sample_step(sample_steps(state), step)
    picked = [s for s in state.samples if chosen is None or s.step == chosen]
    newest = sorted(picked, key=lambda s: -s.step)[:limit]  # stable: a step's images keep their order
    return [(s.path, _caption(s)) for s in newest]


def gallery_label(state: MonitorState, step: float | None = None) -> str:
    """What the gallery shows right now."""
    steps = sample_steps(state)
    if not steps:
        return "Samples: none yet (previews appear here, newest first)"
    chosen = nearest_sample_step(steps, step)
    if chosen is None:
        return f"Samples: all {len(steps)} sampled steps, newest first (click to enlarge)"
    return f"Samples at step {chosen} ({steps.index(chosen) + 1} of {len(steps)}; click to enlarge)"


def scrub_maximum(state: MonitorState) -> int:
    """The step slider's upper end: the newest sampled step (at least 1, so the slider stays valid)."""
    steps = sample_steps(state)
    return max(1, steps[-1]) if steps else 1


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_text(state: MonitorState) -> str:
    """" · ETA h:mm:ss" while a run trains; before a step after the first has been timed (the first pays for
    warm-up), say so rather than guess."""
    if state.outcome:
        return ""
    if state.eta_s is None and len(state.steps) < 3:
        return " · ETA after the first steps"
    return f" · ETA {format_eta(state.eta_s)}"


def status_markdown(state: MonitorState, run_id: str | None) -> str:
    """One-line summary: run, phase or outcome, step/total, epoch, last loss, speed (it/s, samples/s), ETA."""
    if not run_id:
        return "No run attached. Start one from the **Chroma setup** tab, or pick a run above."
    head = f"**Run** `{run_id}` · **{state.outcome or state.phase}**"
    if not state.steps:
        return head + (f" · {state.phase_message}" if state.phase_message else "")
    total = f"/{state.total_steps}" if state.total_steps else ""
    speed = f" · {state.it_per_s:.2f} it/s" if state.it_per_s else ""
    speed += f" · {state.samples_per_s:.2f} samples/s" if state.samples_per_s else ""
    eta = eta_text(state)
    within = f" · {state.phase_message}" if phase_progress(state) and state.phase_message else ""
    return (f"{head}{within} · step {state.steps[-1]}{total} · epoch {state.epoch} · "
            f"loss {state.losses[-1]:.4g}{speed}{eta}")


LEVELS = ("debug", "info", "warning", "error")


def log_text(state: MonitorState, lines: int = LOG_TAIL_LINES, level: str = "debug", query: str = "") -> str:
    """The newest log lines at ``level`` or above that contain ``query`` (case-insensitive)."""
    floor = LEVELS.index(level) if level in LEVELS else 0
    wanted = {f"[{name.upper()}]" for name in LEVELS[floor:]}
    needle = query.strip().lower()
    kept = [line for line in state.logs
            if line.split(" ", 1)[0] in wanted and (not needle or needle in line.lower())]
    return "\n".join(kept[-lines:])


def phase_progress(state: MonitorState) -> tuple[int, int] | None:
    """(done, total) of the phase under way when it reports its own progress (caching, previews), else None."""
    if state.outcome or state.phase_done is None or not state.phase_total:
        return None
    return min(state.phase_done, state.phase_total), state.phase_total


def progress_html(state: MonitorState) -> str:
    """Phase, a progress bar over the planned steps, and the ETA; a phase that reports its own progress
    (caching N items, rendering N previews) shows that instead, so the bar moves before the first loss."""
    label = state.outcome or state.phase
    within = phase_progress(state)
    if within:
        done, total = within
        return (f'<div class="dp-progress" data-phase="{label}"><b>{label}</b> · {done}/{total}'
                f'{f" · {html.escape(state.phase_message)}" if state.phase_message else ""}'
                f'<div class="dp-bar"><div class="dp-fill" style="width:{100.0 * done / total:.1f}%"></div></div></div>')
    done = state.steps[-1] if state.steps else 0
    pct = 100.0 * done / state.total_steps if state.total_steps else 0.0
    if state.outcome == "completed":
        pct = 100.0
    eta = eta_text(state)
    steps = f"{done}/{state.total_steps} steps" if state.total_steps else f"{done} steps"
    return (f'<div class="dp-progress" data-phase="{label}"><b>{label}</b> · {steps}{eta}'
            f'<div class="dp-bar"><div class="dp-fill" style="width:{pct:.1f}%"></div></div></div>')


def resources_markdown(res) -> str:
    """One line per device: CPU/RAM/disk, then each GPU's memory and utilisation."""
    disk = f" · disk free {res.disk_free_gb:.1f} GB" if res.disk_free_gb is not None else ""
    parts = [f"CPU {res.cpu_pct:.0f}% · RAM {res.ram_used_gb:.1f}/{res.ram_total_gb:.1f} GB{disk}"]
    parts += [f"GPU{g.index} {g.name}: {g.mem_used_gb:.1f}/{g.mem_total_gb:.1f} GB · {g.util_pct:.0f}%"
              for g in res.gpus]
    if not res.gpus and res.gpu_note:
        parts.append(f"GPU: {res.gpu_note}")
    return "  \n".join(parts)
