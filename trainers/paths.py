"""Where dp-studio keeps its per-user data (profiles, secrets, history)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def studio_home() -> Path:
    """The user data folder: ``$DP_STUDIO_HOME``, else ``$XDG_DATA_HOME/dp-studio``,
    else ``~/.local/share/dp-studio``. Not created here; writers create what they need."""
    explicit = os.environ.get("DP_STUDIO_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg).expanduser() / "dp-studio"
    return Path.home() / ".local" / "share" / "dp-studio"


def profiles_dir() -> Path:
    """Folder holding one sub-folder per saved profile."""
    return studio_home() / "profiles"


def secrets_file() -> Path:
    """The 0600 secret store (W&B key); see ``trainers.config.secrets``."""
    return studio_home() / "secrets.toml"


def default_runs_root() -> Path:
    """Folder the demo writes its runs into (profiles name their own ``output_dir``)."""
    return studio_home() / "runs"


def user_path(text: str | os.PathLike[str]) -> Path:
    """A path a user typed, ``~`` expanded; ``~name`` of a user this machine does not know stays as written
    (``Path.expanduser`` raises RuntimeError there), so the caller reports it as a missing path."""
    path = Path(text)
    try:
        return path.expanduser()
    except RuntimeError:
        return path
