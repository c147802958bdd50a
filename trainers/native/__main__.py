"""``python -m trainers.native --run-dir RUN_DIR [--max-steps N]``: one native training run.

Reads ``RUN_DIR/run.json`` and the config copies, writes ``events.jsonl``, samples and LoRAs into the run
folder, and always ends with exactly one ``finished`` or ``failed`` event (everything is caught here).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path

from trainers.events import EventWriter, FailedEvent, FinishedEvent, LogEvent, PhaseEvent


class EventLogHandler(logging.Handler):
    """Forwards warnings of the native trainer's loggers (skipped files, dropped buckets) as log events."""

    def __init__(self, events: EventWriter):
        super().__init__(level=logging.WARNING)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        try:
            self.events.emit(LogEvent(level=level, message=record.getMessage()))
        except Exception:  # a log line must never break the run
            self.handleError(record)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m trainers.native", description="dp-studio native trainer")
    parser.add_argument("--run-dir", required=True, type=Path, help="run folder holding run.json")
    parser.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    parser.add_argument("--resume", default=None, metavar="global_stepN",
                        help="continue from this training-state folder of the run (exactly where it was)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one training; returns the process exit code (0 finished, 1 failed)."""
    args = parse_args(argv)
    run_dir = args.run_dir.resolve()
    events = EventWriter(run_dir)
    events.emit(PhaseEvent(phase="starting", message=f"native trainer, pid {os.getpid()}"))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("trainers.native").addHandler(EventLogHandler(events))
    # diffusers' own internals raise deprecation notices we cannot act on; keep stdout.log readable.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers\..*")
    trainer = None
    try:
        # Heavy imports (torch, diffusers) only after "starting" is on record.
        from trainers.native.loop import Trainer
        from trainers.native.settings import load_run

        trainer = Trainer(load_run(run_dir, args.max_steps), events, resume=args.resume)
        signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop())
        reason = trainer.run()
    except BaseException as exc:  # noqa: BLE001 - the run must end with one failed event, whatever happened
        events.emit(FailedEvent(error=f"{type(exc).__name__}: {exc}", detail=traceback.format_exc()))
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return 1
    events.emit(FinishedEvent(step=trainer.step, epoch=trainer.epoch, reason=reason))
    return 0


if __name__ == "__main__":
    sys.exit(main())
