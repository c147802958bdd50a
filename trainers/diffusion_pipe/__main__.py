"""``python -m trainers.diffusion_pipe --run-dir RUN_DIR``: supervise one diffusion-pipe run.

Reads ``RUN_DIR/run.json`` and the config copies, launches the user's checkout, and always ends with exactly one
``finished`` or ``failed`` event (unless it is itself terminated: then whoever ended it records why, as
``RunManager.kill`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from trainers.diffusion_pipe.launch import LaunchError
from trainers.diffusion_pipe.supervise import Supervisor, fail, prepare
from trainers.events import EventWriter, PhaseEvent
from trainers.runs import RUN_FILE


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m trainers.diffusion_pipe",
                                     description="dp-studio supervisor for a diffusion-pipe checkout")
    parser.add_argument("--run-dir", required=True, type=Path, help="run folder holding run.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Supervise one run; returns the exit code (0 finished, 1 failed, 143 terminated)."""
    run_dir = parse_args(argv).run_dir.resolve()
    events = EventWriter(run_dir)
    events.emit(PhaseEvent(phase="starting", message=f"diffusion-pipe supervisor, pid {os.getpid()}"))
    supervisor = None
    try:
        if not (run_dir / RUN_FILE).is_file():
            raise LaunchError(f"{run_dir} has no {RUN_FILE}. Fix: start runs from the studio (RunManager.start), "
                              "which writes it with the config copies")
        meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        supervisor = Supervisor(run_dir, prepare(run_dir, meta), events)

        def on_signal(*_):
            supervisor.signalled = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        return supervisor.run()
    except LaunchError as exc:
        fail(events, str(exc))
        return 1
    except BaseException as exc:  # noqa: BLE001 - the run must end with one failed event, whatever happened
        if supervisor is not None:
            supervisor.kill()
        if supervisor is None or supervisor.terminal is None:
            fail(events, f"the diffusion-pipe supervisor crashed: {type(exc).__name__}: {exc}",
                 traceback.format_exc())
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
