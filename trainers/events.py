"""Typed events: the one stream both trainers write and the studio reads.

Each run folder holds ``events.jsonl``: append-only, one JSON object a line, each with a ``kind``.
Writers append whole lines with a single ``write`` and flush, so a reader that sees a partial last line
simply waits for it to be completed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

EVENTS_FILE = "events.jsonl"

Phase = Literal["starting", "loading", "caching", "training", "evaluating", "sampling", "saving", "finished"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    t: float = Field(default_factory=time.time, description="Unix time the event was written.")


class PhaseEvent(_Event):
    kind: Literal["phase"] = "phase"
    phase: Phase
    message: str = ""
    total: int | None = Field(default=None, description="Units of work in this phase, when known.")
    done: int | None = Field(default=None, ge=0, description="Units of this phase done so far (a progress "
                             "report within the phase: items cached, previews rendered).")


class StepEvent(_Event):
    kind: Literal["step"] = "step"
    step: int = Field(ge=1, description="Optimizer step just finished (1-based, as diffusion-pipe counts).")
    epoch: int = Field(ge=1)
    loss: float
    lr: float
    it_per_s: float | None = None
    samples_per_s: float | None = None
    total_steps: int | None = None
    eta_s: float | None = None
    grad_norm: float | None = None


class SampleEvent(_Event):
    kind: Literal["sample"] = "sample"
    step: int = Field(ge=0)
    epoch: int = Field(ge=0)
    path: str = Field(description="Image path relative to the run folder.")
    prompt: str
    seed: int
    index: int = 0
    source: Literal["live", "sidecar"] = Field(
        default="live", description="live: rendered by the trainer; sidecar: rendered later from a saved LoRA.")


class CheckpointEvent(_Event):
    kind: Literal["checkpoint"] = "checkpoint"
    step: int
    epoch: int
    path: str = Field(description="Saved folder relative to the run folder, e.g. epoch3.")
    what: Literal["lora", "state", "model"] = "lora"


class EvalEvent(_Event):
    kind: Literal["eval"] = "eval"
    step: int
    epoch: int
    name: str
    loss: float
    quantiles: dict[str, float] = Field(default_factory=dict)


class ResumedEvent(_Event):
    kind: Literal["resumed"] = "resumed"
    step: int = Field(ge=0, description="Optimizer steps already done: training continues with step + 1.")
    epoch: int = Field(ge=0)
    checkpoint: str = Field(description="The training-state folder resumed from, e.g. global_step120.")


class LogEvent(_Event):
    kind: Literal["log"] = "log"
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str


class FinishedEvent(_Event):
    kind: Literal["finished"] = "finished"
    step: int
    epoch: int
    reason: Literal["completed", "stopped"] = "completed"


class FailedEvent(_Event):
    kind: Literal["failed"] = "failed"
    error: str
    detail: str = ""


Event = Annotated[
    PhaseEvent | StepEvent | SampleEvent | CheckpointEvent | EvalEvent | ResumedEvent | LogEvent | FinishedEvent
    | FailedEvent,
    Field(discriminator="kind"),
]
TERMINAL_KINDS = frozenset({"finished", "failed"})
_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(line: str | bytes) -> Event:
    """Parse one JSON line into its typed event (raises pydantic.ValidationError when malformed)."""
    return _ADAPTER.validate_json(line)


def dump_event(event: Event) -> str:
    """One JSON line (no newline) for ``event``."""
    return event.model_dump_json()


class EventWriter:
    """Appends events to ``<run dir>/events.jsonl``; safe to use from one writer process (others may append to the
    same file through their own writers: each event is one write on an ``O_APPEND`` descriptor)."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        self._fd: int | None = None  # opened at the first event and kept: a trainer writes one a step
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: Event) -> Event:
        data = (dump_event(event) + "\n").encode("utf-8")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # One os.write on an O_APPEND descriptor: a reader never sees two events interleaved.
        os.write(self._fd, data)
        return event

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def read_events(run_dir: str | os.PathLike[str], offset: int = 0) -> tuple[list[Event], int]:
    """Events written since byte ``offset``, and the offset to continue from.

    A trailing line without its newline is not consumed (its writer is still writing it). A complete
    line that does not parse becomes a warning ``LogEvent`` instead of breaking the stream.
    """
    path = Path(run_dir) / EVENTS_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    events: list[Event] = []
    for raw in chunk[: end + 1].splitlines():
        if raw.strip():
            events.append(_parse_or_warn(raw))
    return events, offset + end + 1


def _parse_or_warn(raw: bytes) -> Event:
    try:
        return parse_event(raw)
    except ValueError as exc:
        text = raw[:200].decode("utf-8", "replace")
        return LogEvent(level="warning", message=f"unreadable event line skipped ({exc.__class__.__name__}): {text}")


def load_all(run_dir: str | os.PathLike[str]) -> list[Event]:
    """Every complete event of a run, from the start."""
    return read_events(run_dir, 0)[0]
