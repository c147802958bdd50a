"""What the UI's handlers call: one object built by app.py and shared by every session."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from trainers.paths import profiles_dir
from trainers.runs import RunManager, resolve_config_path


@dataclass
class Services:
    manager: RunManager
    demo_main: Path
    allowed_roots: list[Path] = field(default_factory=list)  # extra folders a remote caller's paths may name

    def path_roots(self) -> list[Path]:
        """The configured folders: output folders, profiles, the demo profile's folder and ``allowed_roots``. A
        caller on another machine only gets paths looked up inside these (docs/security.md)."""
        return list(dict.fromkeys([*self.manager.roots, profiles_dir(), self.demo_main.parent, *self.allowed_roots]))

    @property
    def demo_dataset_dir(self) -> Path:
        """The first dataset folder named by the demo profile's dataset TOML."""
        main = tomllib.loads(self.demo_main.read_text(encoding="utf-8"))
        dataset_toml = resolve_config_path(self.demo_main.parent, main["dataset"])
        dataset = tomllib.loads(dataset_toml.read_text(encoding="utf-8"))
        return resolve_config_path(self.demo_main.parent, dataset["directory"][0]["path"])


LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost", "testclient"}


def is_remote(request) -> bool:
    """Whether a Gradio request comes from another machine: any non-loopback peer, and any request a proxy
    forwarded (its peer is the proxy). No request at all (a direct call in-process) is local."""
    if request is None:
        return False
    headers = {k.lower(): v for k, v in dict(getattr(request, "headers", {}) or {}).items()}
    if headers.get("x-forwarded-for") or headers.get("forwarded") or headers.get("x-real-ip"):
        return True
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) if client is not None else None
    if not host:
        return True
    import ipaddress

    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host not in LOOPBACK_HOSTS
