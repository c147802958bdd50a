"""Serving dp-studio hosted: in the Docker image and on a Hugging Face Space.

- The login can come from a file instead of the command line (a Docker or Compose secret): ``--auth-file PATH``
  or ``DP_STUDIO_AUTH_FILE``, holding ``USER:PASSWORD`` on its first line. The file is read, never echoed.
- On a Space (``SPACE_ID`` is set) with persistent storage (``/data`` mounted and writable), the studio keeps
  its profiles, secrets and runs in ``/data/dp-studio`` unless ``DP_STUDIO_HOME`` says otherwise. Spaces bind
  0.0.0.0, so app.py's exposure check asks for a login there: set ``DP_STUDIO_AUTH`` as a Space secret.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

AUTH_FILE_ENV = "DP_STUDIO_AUTH_FILE"
SPACE_DATA = Path("/data")


class HostingError(ValueError):
    """The hosting settings cannot be used; the message names the file or variable and the fix."""


def auth_from_file(path: str | os.PathLike[str]) -> str:
    """``USER:PASSWORD`` from the first line of ``path``."""
    file = Path(path)
    try:
        first = file.read_text(encoding="utf-8").splitlines()[:1]
    except (OSError, UnicodeDecodeError) as exc:
        raise HostingError(f"cannot read the login file {file} ({exc.__class__.__name__}); mount it (Compose "
                           f"secret) or fix {AUTH_FILE_ENV}") from None
    value = first[0].strip() if first else ""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise HostingError(f"the login file {file} must hold USER:PASSWORD on its first line")
    return value


def resolve_auth(given: str | None, auth_file: str | None, env: MutableMapping[str, str] | None = None) -> str | None:
    """The login to serve with: ``--auth`` wins, then ``--auth-file``, then ``DP_STUDIO_AUTH_FILE``."""
    env = os.environ if env is None else env
    if given:
        return given
    path = auth_file or env.get(AUTH_FILE_ENV)
    return auth_from_file(path) if path else None


def space_home(env: MutableMapping[str, str] | None = None, data: Path = SPACE_DATA) -> Path | None:
    """Where a Space keeps the studio's data: ``/data/dp-studio`` on a Space with writable persistent storage."""
    env = os.environ if env is None else env
    if not env.get("SPACE_ID") or env.get("DP_STUDIO_HOME") or not data.is_dir() or not os.access(data, os.W_OK):
        return None
    return data / "dp-studio"


def apply_space_defaults(env: MutableMapping[str, str] | None = None, data: Path = SPACE_DATA) -> Path | None:
    """Point ``DP_STUDIO_HOME`` at the Space's persistent storage when there is one; returns it (else None)."""
    env = os.environ if env is None else env
    home = space_home(env, data)
    if home is not None:
        env["DP_STUDIO_HOME"] = str(home)
    return home
