"""Commands into a running trainer: small files in the run folder, polled at step boundaries.

This mirrors diffusion-pipe, which honours empty ``save`` and ``save_quit`` files in its run folder.
Ours live in ``<run dir>/commands/`` so they never collide with diffusion-pipe's own names.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

COMMANDS_DIR = "commands"


class Command(StrEnum):
    STOP = "stop"
    SAVE = "save"
    SAMPLE = "sample"


def send_command(run_dir: str | os.PathLike[str], command: Command | str) -> Path:
    """Ask the trainer of ``run_dir`` to do ``command`` at its next step boundary."""
    cmd = Command(command)
    folder = Path(run_dir) / COMMANDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / cmd.value
    tmp = folder / f".{cmd.value}.tmp"
    tmp.write_text("", encoding="utf-8")
    os.replace(tmp, target)
    return target


def take_commands(run_dir: str | os.PathLike[str]) -> set[Command]:
    """Commands waiting for the trainer; each is removed as it is taken."""
    folder = Path(run_dir) / COMMANDS_DIR
    taken: set[Command] = set()
    for cmd in Command:
        path = folder / cmd.value
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        taken.add(cmd)
    return taken


def pending_commands(run_dir: str | os.PathLike[str]) -> set[Command]:
    """Commands sent but not yet taken (for display)."""
    folder = Path(run_dir) / COMMANDS_DIR
    return {cmd for cmd in Command if (folder / cmd.value).exists()}
