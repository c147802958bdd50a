"""Find the user's diffusion-pipe checkout and say whether it can train, naming the fix for each problem.

dp-studio never imports diffusion-pipe (GPL-3.0): it only checks files and runs ``deepspeed train.py`` as a
separate process. Where the checkout is: ``[studio] diffusion_pipe_path`` in the main TOML, else the
``DP_STUDIO_DIFFUSION_PIPE`` environment variable. Which launcher runs it: ``DP_STUDIO_DEEPSPEED_CMD`` (tests set it
to a plain Python), else ``[studio] deepspeed_command``, else ``deepspeed`` inside the checkout's own venv, else
``deepspeed`` on PATH, else ``python -m deepspeed.launcher.runner`` when this Python has DeepSpeed.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

CHECKOUT_ENV = "DP_STUDIO_DIFFUSION_PIPE"
LAUNCHER_ENV = "DP_STUDIO_DEEPSPEED_CMD"
CLONE_HINT = "git clone --recurse-submodules https://github.com/tdrussell/diffusion-pipe"
_VENV_DIRS = ("venv", ".venv", "env")


@dataclass(frozen=True)
class HealthIssue:
    level: Literal["error", "warning"]
    message: str
    fix: str

    def describe(self) -> str:
        return f"{self.message}. Fix: {self.fix}"


@dataclass(frozen=True)
class CheckoutHealth:
    """The checkout (None when not configured), the launcher found, and every problem with the fix."""

    root: Path | None
    launcher: list[str] | None
    python_version: tuple[int, int] | None = None
    issues: list[HealthIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(i.level == "error" for i in self.issues)

    def errors(self) -> list[HealthIssue]:
        return [i for i in self.issues if i.level == "error"]

    def warnings(self) -> list[HealthIssue]:
        return [i for i in self.issues if i.level == "warning"]


def locate_checkout(studio: Mapping | None = None, *, base: Path | None = None,
                    env: Mapping[str, str] | None = None) -> Path | None:
    """The checkout folder: ``[studio] diffusion_pipe_path`` (relative to ``base``), else $DP_STUDIO_DIFFUSION_PIPE."""
    env = os.environ if env is None else env
    value = (studio or {}).get("diffusion_pipe_path") or env.get(CHECKOUT_ENV)
    if not value:
        return None
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path.resolve()


def find_launcher(studio: Mapping | None = None, root: Path | None = None, *,
                  env: Mapping[str, str] | None = None) -> list[str] | None:
    """The command that starts training (argv prefix before ``train.py``), or None when none is found."""
    env = os.environ if env is None else env
    for explicit in (env.get(LAUNCHER_ENV), (studio or {}).get("deepspeed_command")):
        if explicit:
            return list(explicit) if isinstance(explicit, list) else shlex.split(str(explicit))
    for venv in _VENV_DIRS if root else ():
        candidate = root / venv / "bin" / "deepspeed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    on_path = shutil.which("deepspeed", path=env.get("PATH"))
    if on_path:
        return [on_path]
    if importlib.util.find_spec("deepspeed") is not None:
        return [sys.executable, "-m", "deepspeed.launcher.runner"]
    return None


def is_deepspeed_launcher(launcher: list[str]) -> bool:
    """True for DeepSpeed's launcher (takes --num_gpus); False for a plain interpreter running train.py itself."""
    return any(Path(part).name.startswith("deepspeed") or "deepspeed.launcher" in part for part in launcher[:3])


def launcher_python(launcher: list[str]) -> str | None:
    """The interpreter that will run train.py: the launcher itself, or its script's ``#!`` line."""
    first = launcher[0]
    if Path(first).name.startswith("python") or "-m" in launcher[1:2]:
        return first
    script = shutil.which(first) or first
    try:
        with open(script, "rb") as fh:
            shebang = fh.readline().decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not shebang.startswith("#!"):
        return None
    parts = shlex.split(shebang[2:])
    if parts and Path(parts[0]).name == "env":
        parts = [p for p in parts[1:] if not p.startswith("-")]
    return parts[0] if parts else None


def python_version(python: str, timeout_s: float = 20.0) -> tuple[int, int] | None:
    """``(major, minor)`` of an interpreter, or None when it cannot be run."""
    try:
        done = subprocess.run([python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        major, minor = done.stdout.split()
        return int(major), int(minor)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def check_checkout(root: Path | None, launcher: list[str] | None, *,
                   version: tuple[int, int] | None = None) -> list[HealthIssue]:
    """Problems with a checkout and launcher (pure: ``version`` is the launcher Python's, when known)."""
    if root is None:
        return [HealthIssue("error", "no diffusion-pipe checkout is configured",
                            f"set [studio] diffusion_pipe_path = '/path/to/diffusion-pipe' in the main TOML or the "
                            f"{CHECKOUT_ENV} environment variable; get one with `{CLONE_HINT}`")]
    if not root.is_dir():
        return [HealthIssue("error", f"diffusion-pipe checkout {root} does not exist",
                            f"point [studio] diffusion_pipe_path at the folder holding train.py, or `{CLONE_HINT}`")]
    issues: list[HealthIssue] = []
    if not (root / "train.py").is_file():
        issues.append(HealthIssue("error", f"{root} has no train.py, so it is not a diffusion-pipe checkout",
                                  "point [studio] diffusion_pipe_path at the repository root (the folder with train.py)"))
    comfy = root / "submodules" / "ComfyUI"
    if not comfy.is_dir() or not any(comfy.iterdir()):
        issues.append(HealthIssue("error", f"the ComfyUI submodule is missing or empty ({comfy}); every model type "
                                           "imports it", f"run `git submodule update --init --recursive` in {root}"))
    issues += _launcher_issues(launcher, version)
    return issues


def _launcher_issues(launcher: list[str] | None, version: tuple[int, int] | None) -> list[HealthIssue]:
    if launcher is None:
        return [HealthIssue("error", "DeepSpeed's launcher was not found (no `deepspeed` on PATH or in the checkout's "
                                     "venv, and `python -m deepspeed.launcher.runner` is not available)",
                            "activate diffusion-pipe's environment and `pip install -r requirements.txt` there, or set "
                            f"[studio] deepspeed_command (or {LAUNCHER_ENV}) to its deepspeed executable")]
    if version is not None and version < (3, 12):
        return [HealthIssue("warning", f"{launcher[0]} runs Python {version[0]}.{version[1]}; diffusion-pipe's "
                                       "utils/cache.py needs Python >= 3.12 (sqlite3.connect(autocommit=...))",
                            "create diffusion-pipe's environment with Python 3.12 (its README uses a conda env with 3.12)")]
    return []


def checkout_health(studio: Mapping | None = None, *, base: Path | None = None,
                    env: Mapping[str, str] | None = None, probe_python: bool = True) -> CheckoutHealth:
    """Locate the checkout and launcher and check both; ``probe_python`` runs the launcher's Python once."""
    root = locate_checkout(studio, base=base, env=env)
    launcher = find_launcher(studio, root, env=env)
    version = None
    if probe_python and launcher:
        python = launcher_python(launcher)
        version = python_version(python) if python else None
    return CheckoutHealth(root=root, launcher=launcher, python_version=version,
                          issues=check_checkout(root, launcher, version=version))
