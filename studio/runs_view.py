"""Pure logic of the runs library: config diffs, overlaid curves, prompt × step sample grids.

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

from studio.view import MonitorState, ema

MISSING = "—"
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


def _show(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def run_config(run_dir: Path, meta: Mapping) -> dict:
    """The run's main config with its dataset config nested under ``dataset_config`` (copies in the folder)."""
    config: dict = {}
    main = run_dir / str(meta.get("main_config", ""))
    if main.is_file():
        config = tomllib.loads(main.read_text(encoding="utf-8"))
    dataset = run_dir / str(meta.get("dataset_config", ""))
    if dataset.is_file():
        config["dataset_config"] = tomllib.loads(dataset.read_text(encoding="utf-8"))
    return config


def overlay_figure(curves: Mapping[str, MonitorState], smoothing: float = 0.9, log_y: bool = False) -> go.Figure:
    """EMA-smoothed loss of several runs on one chart, one colour each."""
    fig = go.Figure()
    for label, state in curves.items():
        fig.add_scatter(x=state.steps, y=ema(state.losses, smoothing), mode="lines", name=label)
    fig.update_layout(height=360, margin={"l": 40, "r": 10, "t": 30, "b": 30}, title="loss (EMA) by run",
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


def sample_grid(samples: list[tuple[int, str, str, int]], prompt: str | None = None) -> Grid:
    """Arrange (step, path, prompt, seed) samples as prompt × step; optionally one prompt only.

    When several images share a cell (e.g. a run resumed over the same step), the last one wins.
    """
    picked = [s for s in samples if prompt is None or s[2] == prompt]
    rows = sorted({(s[2], s[3]) for s in picked})
    columns = sorted({s[0] for s in picked})
    r_index = {r: i for i, r in enumerate(rows)}
    c_index = {c: i for i, c in enumerate(columns)}
    cells = {(r_index[(p, seed)], c_index[step]): path for step, path, p, seed in picked}
    return Grid(rows, columns, cells)


def cross_run_grid(per_run: Mapping[str, list[tuple[int, str, str, int]]], prompt: str, seed: int) -> Grid:
    """One row per run for the same prompt and seed, one column per step."""
    rows, cells, columns = [], {}, sorted({s[0] for samples in per_run.values() for s in samples
                                           if s[2] == prompt and s[3] == seed})
    c_index = {c: i for i, c in enumerate(columns)}
    for label, samples in per_run.items():
        rows.append((label, seed))
        for step, path, p, s in samples:
            if p == prompt and s == seed:
                cells[(len(rows) - 1, c_index[step])] = path
    return Grid(rows, columns, cells)


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
