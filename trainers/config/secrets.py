"""The secret store: the W&B API key lives here, never in a profile, export, log line or event.

A 0600 TOML file ``<studio_home>/secrets.toml``; the environment (``WANDB_API_KEY``) wins over the file.
``strip_secrets`` moves a key found in a config into the store and removes it from the document.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.toml_document import TOMLDocument

from trainers.config.toml_io import atomic_write_bytes, delete_value, get_value, loads, read_text
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

    def describe(self) -> str:
        if self.stored:
            return f"moved {self.key} into the secret store and removed it from the profile"
        return f"removed the empty {self.key} from the profile"


def strip_secrets(doc: TOMLDocument, store: SecretStore | None) -> list[StrippedSecret]:
    """Remove every secret key from ``doc``; non-empty values go into ``store`` (if given)."""
    stripped = []
    for name, (_, dotted) in SECRETS.items():
        value = get_value(doc, dotted)
        if value is None:
            continue
        text = str(value)
        if text and store is not None:
            store.set(name, text)
        delete_value(doc, dotted)
        stripped.append(StrippedSecret(name, dotted, bool(text) and store is not None))
    return stripped


def contains_secret(doc: TOMLDocument) -> bool:
    """True when the document still carries a secret key (exports refuse such documents)."""
    return any(get_value(doc, dotted) is not None for _, dotted in SECRETS.values())
