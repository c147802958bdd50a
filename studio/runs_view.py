"""Pure logic of the runs library: config diffs, overlaid curves, prompt × step sample grids (per run and
across runs), and reading the sidecar and resume inputs.

Inputs are plain data read from run folders (events, parsed TOML); outputs are tables, plotly figures and
PIL images. No Gradio here, and no torch.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from PIL import Image, ImageDraw

from studio.view import MonitorState, Sample, ema, series
from trainers.config.secrets import redact_plain
from trainers.safe_paths import PathRefused, resolve_under

MISSING = "—"
RUN_COLOURS = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880")
CELL = 160
LABEL_W = 220
HEADER_H = 28


def flatten(table: Mapping, prefix: str = "") -> dict[str, object]:
    """Dotted keys for every leaf of a parsed TOML table; arrays of tables get ``[i]`` indices."""
    out: dict[str, object] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted + "."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{dotted}[{i}]."))
        else:
            out[dotted] = value
    return out


def config_diff(a: Mapping, b: Mapping) -> list[tuple[str, str, str]]:
    """Key-by-key differences of two parsed configs: (dotted key, value in A, value in B), sorted by key."""
    fa, fb = flatten(a), flatten(b)
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, MISSING), fb.get(key, MISSING)
        if va != vb:
            rows.append((key, _show(va), _show(vb)))
    return rows


def diff_note(a: str, b: str, rows: list) -> str:
    """The line above the config diff table: how many keys differ, or that the configs are identical (an empty
    table alone reads as "nothing loaded yet")."""
    if not rows:
        return f"The configs of **{a}** and **{b}** are identical." if a != b else f"**{a}** is compared with itself."
    return f"{len(rows)} key{'s' * (len(rows) != 1)} differ between **{a}** (A) and **{b}** (B)."


def _show(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def run_config(run_dir: Path, meta: Mapping) -> dict:
    """The run's main config with its dataset config nested under ``dataset_config`` (copies in the folder).
    The file names come from run.json and must lie in the run folder; secrets show as ``***``."""
    config: dict = {}
    main = _run_file(run_dir, meta.get("main_config"))
    if main is not None:
        config = redact_plain(tomllib.loads(main.read_text(encoding="utf-8")))
    dataset = _run_file(run_dir, meta.get("dataset_config"))
    if dataset is not None:
        config["dataset_config"] = tomllib.loads(dataset.read_text(encoding="utf-8"))
    return config


def _run_file(run_dir: Path, name: object) -> Path | None:
    try:
        path = resolve_under(run_dir, name, "config file of the run")
    except PathRefused:
        return None
    return path if path.is_file() else None


def overlay_figure(curves: Mapping[str, MonitorState], smoothing: float = 0.9, log_y: bool = False) -> go.Figure:
    """EMA-smoothed loss of several runs on one chart, one colour each, with each run's eval loss (mean
    per eval set) as a dashed line with markers in the same colour."""
    fig = go.Figure()
    for i, (label, state) in enumerate(curves.items()):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        xs, ys = series(state.steps, ema(state.losses, smoothing))
        fig.add_scatter(x=xs, y=ys, mode="lines", name=label,
                        legendgroup=label, line={"color": colour})
        for name, points in sorted(state.evals.items()):
            fig.add_scatter(x=[p.step for p in points], y=[p.loss for p in points], mode="lines+markers",
                            name=f"{label} · eval {name}", legendgroup=label,
                            line={"color": colour, "dash": "dash"})
    fig.update_layout(height=360, margin={"l": 40, "r": 10, "t": 30, "b": 30},
                      title="loss (EMA, solid) and eval loss (dashed) by run",
                      xaxis_title="step", yaxis_type="log" if log_y else "linear",
                      legend={"orientation": "h", "y": -0.2})
    return fig


@dataclass(frozen=True)
class Grid:
    """Samples laid out with one row per (prompt, seed) and one column per step."""

    rows: list[tuple[str, int]]
    columns: list[int]
    cells: dict[tuple[int, int], str]  # (row index, column index) -> image path

    @property
    def empty(self) -> bool:
        return not self.cells


def sample_grid(samples: list[Sample], prompt: str | None = None) -> Grid:
    """Arrange samples as prompt × step; optionally one prompt only.

    When several images share a cell (e.g. a run resumed over the same step), the last one wins.
    """
    picked = [s for s in samples if prompt is None or s.prompt == prompt]
    rows = sorted({(s.prompt, s.seed) for s in picked})
    columns = sorted({s.step for s in picked})
    r_index = {r: i for i, r in enumerate(rows)}
    c_index = {c: i for i, c in enumerate(columns)}
    cells = {(r_index[(s.prompt, s.seed)], c_index[s.step]): s.path for s in picked}
    return Grid(rows, columns, cells)


def cross_run_grid(per_run: Mapping[str, list[Sample]], prompt: str, seed: int) -> Grid:
    """One row per run for the same prompt and seed, one column per step."""
    rows, cells, columns = [], {}, sorted({s.step for samples in per_run.values() for s in samples
                                           if s.prompt == prompt and s.seed == seed})
    c_index = {c: i for i, c in enumerate(columns)}
    for label, samples in per_run.items():
        rows.append((label, seed))
        for s in samples:
            if s.prompt == prompt and s.seed == seed:
                cells[(len(rows) - 1, c_index[s.step])] = s.path
    return Grid(rows, columns, cells)


def pair_key(prompt: str, seed: int) -> str:
    """A dropdown value naming one (prompt, seed) pair."""
    return f"{seed}|{prompt}"


def parse_pair_key(key: str) -> tuple[str, int]:
    """(prompt, seed) back from :func:`pair_key`."""
    seed, sep, prompt = key.partition("|")
    if not sep or not seed.lstrip("-").isdigit():
        raise ValueError(f"{key!r} does not name a prompt and seed; pick one from the list")
    return prompt, int(seed)


def shared_pairs(per_run: Mapping[str, list[Sample]]) -> list[tuple[str, str]]:
    """(label, key) of every (prompt, seed) pair, those that more runs share first, then by prompt and seed."""
    runs_with: dict[tuple[str, int], int] = {}
    for samples in per_run.values():
        for pair in {(s.prompt, s.seed) for s in samples}:
            runs_with[pair] = runs_with.get(pair, 0) + 1
    ordered = sorted(runs_with, key=lambda pair: (-runs_with[pair], pair))
    total = len(per_run)
    return [(f"{p} · seed {seed} · in {runs_with[(p, seed)]} of {total} runs", pair_key(p, seed))
            for p, seed in ordered]


def parse_prompts(text: str | None) -> list[str]:
    """One prompt a line; blank lines are skipped (none: the run's own ``[studio]`` prompts)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def parse_seeds(text: str | None) -> list[int]:
    """Whole numbers separated by commas or spaces (none: the run's own ``[studio]`` seeds)."""
    seeds = []
    for part in (text or "").replace(",", " ").split():
        try:
            seeds.append(int(part))
        except ValueError:
            raise ValueError(f"seeds: {part!r} is not a whole number; write seeds like 7, 42") from None
    return seeds


RESUME_KINDS = {"state": "full state", "lora": "LoRA only"}


def resume_choice(point) -> tuple[str, str]:
    """(dropdown label, value) for a ``trainers.checkpoints.ResumePoint``: the kind is always spelled out,
    because the two continue very differently (exactly vs. a new run from the weights)."""
    return f"[{RESUME_KINDS.get(point.kind, point.kind)}] {point.label}", point.name


def compose_grid(grid: Grid, cell: int = CELL) -> Image.Image:
    """Render a grid as one image: step numbers on top, the prompt/seed (or run) at the left of each row."""
    width = LABEL_W + cell * max(1, len(grid.columns))
    height = HEADER_H + cell * max(1, len(grid.rows))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for ci, step in enumerate(grid.columns):
        draw.text((LABEL_W + ci * cell + 4, 8), f"step {step}", fill="black")
    for ri, (label, seed) in enumerate(grid.rows):
        y = HEADER_H + ri * cell
        draw.multiline_text((4, y + 4), _wrap(f"{label} (seed {seed})", 30), fill="black")
        for ci in range(len(grid.columns)):
            path = grid.cells.get((ri, ci))
            if path is None:
                continue
            with Image.open(path) as im:
                canvas.paste(im.convert("RGB").resize((cell, cell)), (LABEL_W + ci * cell, y))
    return canvas


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line][:8])
