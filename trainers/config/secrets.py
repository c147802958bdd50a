"""The secret store: the W&B API key lives here, never in a profile, export, log line or event.

A 0600 TOML file ``<studio_home>/secrets.toml``; the environment (``WANDB_API_KEY``) wins over the file.
``strip_secrets`` moves a key found in a config into the store and empties its value in the document: the line
stays (``wandb_api_key = ''``, which diffusion-pipe needs when W&B is on, and which keeps a round trip of its
examples byte-identical), the value never leaves the store. An empty key is no secret and is left as it is.
"""

from __future__ import annotations

import copy
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.toml_document import TOMLDocument

from trainers.config.toml_io import (
    atomic_write_bytes,
    get_value,
    load,
    loads,
    read_text,
    save,
    set_value,
    split_key,
)
from trainers.paths import secrets_file

# secret name -> (environment variable that wins, dotted key where configs carry it)
SECRETS: dict[str, tuple[str, str]] = {"wandb_api_key": ("WANDB_API_KEY", "monitoring.wandb_api_key")}
REDACTED = "***"


class SecretStore:
    """Read and write secrets in a 0600 file; ``path`` defaults to ``<studio_home>/secrets.toml``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or secrets_file()

    def get(self, name: str) -> str | None:
        """The secret from the environment, else from the file, else None."""
        env = SECRETS.get(name, ("", ""))[0]
        if env and os.environ.get(env):
            return os.environ[env]
        value = self._read().get(name)
        return value if isinstance(value, str) and value else None

    def source(self, name: str) -> str | None:
        """Where ``get`` finds it: 'environment', 'file' or None (safe to show in the UI)."""
        env = SECRETS.get(name, ("", ""))[0]
        if env and os.environ.get(env):
            return "environment"
        return "file" if self._read().get(name) else None

    def set(self, name: str, value: str) -> None:
        """Store a secret (file mode 0600, written atomically)."""
        data = self._read()
        data[name] = value
        self._write(data)

    def delete(self, name: str) -> bool:
        data = self._read()
        if name not in data:
            return False
        del data[name]
        self._write(data)
        return True

    def values(self) -> list[str]:
        """Every secret value known (file and environment), for redaction."""
        found = [v for v in self._read().values() if isinstance(v, str) and v]
        found += [os.environ[env] for env, _ in SECRETS.values() if os.environ.get(env)]
        return found

    def redact(self, text: str) -> str:
        """``text`` with every known secret value replaced by ``***``."""
        for value in sorted(self.values(), key=len, reverse=True):
            if len(value) >= 4:
                text = text.replace(value, REDACTED)
        return text

    def _read(self) -> dict[str, object]:
        if not self.path.is_file():
            return {}
        return dict(loads(read_text(self.path), str(self.path)).unwrap())

    def _write(self, data: dict[str, object]) -> None:
        text = "# dp-studio secrets. Keep this file private (mode 0600).\n" + tomlkit.dumps(data)
        atomic_write_bytes(self.path, text.encode("utf-8"), mode=stat.S_IRUSR | stat.S_IWUSR)


@dataclass(frozen=True)
class StrippedSecret:
    name: str
    key: str  # dotted key it was found under
    stored: bool  # False when the value was empty (nothing to keep)

    def describe(self, where: str = "the profile") -> str:
        if self.stored:
            return f"moved {self.key} into the secret store and emptied its value in {where}"
        return f"emptied the value of {self.key} in {where} (no secret store to keep it)"


def _secret_text(value: object) -> str | None:
    """The secret a config value carries: a non-empty string (anything else that is not empty counts too)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text or None


def strip_secrets(doc: TOMLDocument, store: SecretStore | None) -> list[StrippedSecret]:
    """Empty every non-empty secret value in ``doc`` (its line, comment and position stay); the values go into
    ``store`` (if given). An empty value is kept as it is and not reported."""
    stripped = []
    for name, (_, dotted) in SECRETS.items():
        text = _secret_text(get_value(doc, dotted))
        if text is None:
            continue
        if store is not None:
            store.set(name, text)
        set_value(doc, dotted, "")
        stripped.append(StrippedSecret(name, dotted, store is not None))
    return stripped


def contains_secret(doc: object) -> bool:
    """True when the document (tomlkit or plain) still carries a non-empty secret (exports refuse those)."""
    return any(_secret_text(get_value(doc, dotted)) is not None for _, dotted in SECRETS.values())


def scrub_file(path: Path, store: SecretStore | None) -> list[StrippedSecret]:
    """Strip secrets from a TOML file in place (atomic, formatting kept); nothing is written when it has none.
    Raises ConfigParseError when the file is not valid TOML."""
    doc = load(path)
    stripped = strip_secrets(doc, store)
    if stripped:
        save(path, doc)
    return stripped


def redact_plain(data: dict) -> dict:
    """A copy of a parsed config with every non-empty secret value replaced by ``***`` (for diffs and views)."""
    out = copy.deepcopy(data)
    for _, dotted in SECRETS.values():
        *parents, last = split_key(dotted)
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and _secret_text(node.get(last)) is not None:
            node[last] = REDACTED
    return out


def scrub_run_copy(path: Path, source: Path) -> list[str]:
    """Strip secrets from a run folder's copy of a config (the store keeps them); messages for the run's log,
    naming ``source`` (the user's file, left as it is) and never the value."""
    stripped = scrub_file(path, SecretStore())
    return [f"{item.describe(f'the run copy {path.name}')}; remove it from {source} too (the studio reads the "
            "key from the store or WANDB_API_KEY)" for item in stripped]
