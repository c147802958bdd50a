"""Eval losses from diffusion-pipe's TensorBoard files, read while the run goes on.

diffusion-pipe never prints eval losses: ``_evaluate`` (train.py:196-227) writes ``<name>/loss_quantile_0.10`` ...
``<name>/loss_quantile_0.90`` for each eval set, then ``<name>/loss`` (their mean), then ``eval/eval_time_sec``, all
at x = the step (or the examples seen, with ``x_axis_examples``), into ``events.out.tfevents.*`` directly in its run
folder (SummaryWriter(log_dir=run_dir), train.py:904, rank 0 only). ``EvalTail`` keeps one incremental reader per
file and returns each ``<name>/loss`` once it is on disk, with the quantiles written before it. torch's SummaryWriter
flushes every 120 s by default, so a result shows up within about two minutes of diffusion-pipe computing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EVENT_GLOB = "events.out.tfevents.*"


@dataclass(frozen=True)
class EvalResult:
    """One eval set's result at one x (step, or examples with ``x_axis_examples``)."""

    name: str
    x: int
    loss: float
    quantiles: dict[str, float]


def _value(value) -> float | None:
    """A scalar summary value: ``simple_value`` as torch writes it, or the scalar tensor the loader may turn it into."""
    if value.WhichOneof("value") == "simple_value":
        return float(value.simple_value)
    if value.WhichOneof("value") == "tensor":
        from tensorboard.util import tensor_util

        array = tensor_util.make_ndarray(value.tensor)
        return float(array.reshape(-1)[0]) if array.size == 1 else None
    return None


@dataclass
class EvalTail:
    """Follows the TensorBoard files of one diffusion-pipe run folder for the eval sets named in the config."""

    names: tuple[str, ...]
    skipped: set[str] = field(default_factory=set)  # files an earlier run wrote (a resumed folder)
    _loaders: dict[str, object] = field(default_factory=dict)
    _quantiles: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)

    def skip_existing(self, run_dir: Path) -> None:
        """Ignore the files already in ``run_dir`` (their evals were reported by the run that wrote them)."""
        self.skipped.update(p.name for p in run_dir.glob(EVENT_GLOB))

    def read(self, run_dir: Path | None) -> list[EvalResult]:
        """Every eval result written since the last call, in file order."""
        if not self.names or run_dir is None:
            return []
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        out: list[EvalResult] = []
        for path in sorted(run_dir.glob(EVENT_GLOB)):
            if path.name in self.skipped:
                continue
            loader = self._loaders.get(path.name)
            if loader is None:  # one reader per file, kept: each Load() continues where the last one stopped
                loader = self._loaders[path.name] = EventFileLoader(str(path))
            for event in loader.Load():  # incremental: only what was appended since the last Load()
                for value in event.summary.value:
                    self._take(value.tag, _value(value), int(event.step), out)
        return out

    def _take(self, tag: str, value: float | None, x: int, out: list[EvalResult]) -> None:
        if value is None:
            return
        for name in self.names:
            if tag == f"{name}/loss":
                out.append(EvalResult(name, x, value, self._quantiles.pop((name, x), {})))
            elif tag.startswith(f"{name}/loss_quantile_"):
                self._quantiles.setdefault((name, x), {})[tag.removeprefix(f"{name}/loss_quantile_")] = value


def eval_names(config: dict) -> tuple[str, ...]:
    """The TensorBoard tag prefixes of the config's eval sets: ``name`` of the table form, ``evalN`` of a bare path
    (train.py:437-443)."""
    names = []
    for index, entry in enumerate(config.get("eval_datasets") or []):
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            names.append(entry["name"])
        elif isinstance(entry, str):
            names.append(f"eval{index}")
    return tuple(names)
