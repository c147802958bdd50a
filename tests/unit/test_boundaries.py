"""Boundaries the design promises: the UI never imports torch; the server refuses to be exposed openly."""

from __future__ import annotations

import subprocess
import sys

import pytest

import app
from tests.conftest import REPO

HEAVY = ("torch", "diffusers", "peft", "transformers")


@pytest.mark.parametrize("module", ["studio", "studio.layout", "trainers.runs", "trainers.cli", "app"])
def test_ui_side_never_imports_torch(module):
    code = f"import sys, {module}; bad = [m for m in {HEAVY!r} if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_loopback_serves_without_auth_but_open_hosts_need_it():
    assert app.check_exposure("127.0.0.1", None) is None
    assert app.check_exposure("localhost", None) is None
    with pytest.raises(SystemExit, match="--auth"):
        app.check_exposure("0.0.0.0", None)
    assert app.check_exposure("0.0.0.0", "me:secret") == ("me", "secret")
    with pytest.raises(SystemExit, match="USER:PASSWORD"):
        app.check_exposure("0.0.0.0", "nopassword")


def test_flags_win_over_gradio_environment(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.2")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    args = app.parse_args([])
    assert (args.host, args.port) == ("127.0.0.2", 7999)
    args = app.parse_args(["--port", "8001", "--host", "127.0.0.1"])
    assert (args.host, args.port) == ("127.0.0.1", 8001)
