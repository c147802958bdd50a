"""Profiles: named config pairs (main + dataset TOML) kept with every saved version, in the user data folder.

Layout under ``<studio_home>/profiles/<slug>/``::

    profile.json               {"name", "slug", "main", "dataset", "created", "shipped", "default", "description"}
    versions/0001/<main>.toml  the pair as saved, byte for byte, under the original file names
    versions/0001/<dataset>.toml
    versions/0001/meta.json    {"version", "created", "message"}

The newest version is the profile. Rollback writes an old version again as a new one, so history is never lost.
Secrets (the W&B key) are moved into the secret store before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from trainers.config.issues import ConfigIssue
from trainers.config.secrets import SecretStore, contains_secret, strip_secrets
from trainers.config.toml_io import atomic_write_bytes, dumps, loads
from trainers.config.validate import validate_texts
from trainers.paths import studio_home

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "profiles"
_VERSION_DIR = re.compile(r"^\d{4,}$")


class ProfileError(ValueError):
    """A profile operation failed; the message says what to do."""


@dataclass(frozen=True)
class ProfileInfo:
    name: str
    slug: str
    main_name: str
    dataset_name: str
    version: int
    updated: str
    folder: Path
    shipped: bool = False
    default: bool = False
    description: str = ""

    @property
    def main_path(self) -> Path:
        """The newest saved main TOML (read it; never edit it in place)."""
        return self.folder / "versions" / f"{self.version:04d}" / self.main_name

    @property
    def dataset_path(self) -> Path:
        return self.folder / "versions" / f"{self.version:04d}" / self.dataset_name


@dataclass(frozen=True)
class ProfileVersion:
    number: int
    created: str
    message: str


@dataclass(frozen=True)
class ProfileTexts:
    main_name: str
    main_text: str
    dataset_name: str
    dataset_text: str


@dataclass(frozen=True)
class SaveReport:
    """What a create/save/import did: the profile, its version, notes for the user and validation issues."""

    profile: ProfileInfo
    version: ProfileVersion
    notes: list[str] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)


def slugify(name: str) -> str:
    """Folder name for a profile name: lower case, runs of other characters become '-'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class ProfileStore:
    """All profile operations. ``home`` defaults to ``studio_home()``; shipped profiles are installed on first
    use unless ``shipped_dir`` is None."""

    def __init__(self, home: Path | None = None, secrets: SecretStore | None = None,
                 shipped_dir: Path | None = SHIPPED_DIR) -> None:
        self.home = Path(home) if home is not None else studio_home()
        self.root = self.home / "profiles"
        self.secrets = secrets or SecretStore(self.home / "secrets.toml")
        self.shipped_dir = shipped_dir
        self._shipped_checked = False

    # reading ---------------------------------------------------------------------------------------------
    def list(self) -> list[ProfileInfo]:
        """Every profile, the default first, then by name."""
        self.ensure_shipped()
        found = [self._info(folder) for folder in sorted(self.root.glob("*/profile.json"))]
        return sorted(found, key=lambda info: (not info.default, info.name.lower()))

    def get(self, name: str) -> ProfileInfo:
        """A profile by name or slug (case-insensitive); ProfileError when there is none."""
        self.ensure_shipped()
        path = self.root / slugify(name) / "profile.json"
        if not slugify(name) or not path.is_file():
            known = ", ".join(info.name for info in self.list()) or "none"
            raise ProfileError(f"no profile named {name!r} (profiles: {known})")
        return self._info(path)

    def default(self) -> ProfileInfo | None:
        profiles = self.list()
        return next((info for info in profiles if info.default), profiles[0] if profiles else None)

    def texts(self, name: str, version: int | None = None) -> ProfileTexts:
        """The pair's text at ``version`` (default: newest)."""
        info = self.get(name)
        folder = self._version_dir(info, version)
        read = lambda file: (folder / file).read_bytes().decode("utf-8")  # noqa: E731
        return ProfileTexts(info.main_name, read(info.main_name), info.dataset_name, read(info.dataset_name))

    def history(self, name: str) -> list[ProfileVersion]:
        """Every saved version, oldest first."""
        info = self.get(name)
        return [self._version(folder) for folder in self._version_dirs(info.folder)]

    def validate(self, name: str, *, skip_path_checks: bool = True, base_dir: Path | None = None,
                 num_gpus: int | None = 1) -> list[ConfigIssue]:
        """Validate the newest version (``base_dir``: where relative paths resolve; default cwd)."""
        pair = self.texts(name)
        return validate_texts(pair.main_text, pair.dataset_text, main_file=pair.main_name,
                              dataset_file=pair.dataset_name, skip_path_checks=skip_path_checks,
                              base_dir=base_dir, num_gpus=num_gpus)

    # writing ---------------------------------------------------------------------------------------------
    def create(self, name: str, pair: ProfileTexts, *, message: str = "created", shipped: bool = False,
               default: bool = False, description: str = "") -> SaveReport:
        """A new profile from a pair of texts (secrets are moved to the secret store first)."""
        slug = self._new_slug(name)
        if pair.main_name == pair.dataset_name:
            raise ProfileError(f"main and dataset files are both named {pair.main_name!r}; rename one")
        for file_name in (pair.main_name, pair.dataset_name):
            if Path(file_name).name != file_name or not file_name.endswith(".toml"):
                raise ProfileError(f"{file_name!r} is not a plain .toml file name")
        pair, notes = self._without_secrets(pair)
        folder = self.root / slug
        meta = {"name": name.strip(), "slug": slug, "main": pair.main_name, "dataset": pair.dataset_name,
                "created": _now(), "shipped": shipped, "default": default, "description": description}
        atomic_write_bytes(folder / "profile.json", json.dumps(meta, indent=2).encode("utf-8"))
        version = self._write_version(folder, pair, message)
        return SaveReport(self._info(folder / "profile.json"), version, notes, self._issues(pair))

    def save(self, name: str, main_text: str, dataset_text: str, message: str = "saved") -> SaveReport:
        """Save new texts as the next version; nothing is written when they equal the newest version."""
        info = self.get(name)
        pair, notes = self._without_secrets(ProfileTexts(info.main_name, main_text, info.dataset_name,
                                                         dataset_text))
        current = self.texts(name)
        if (pair.main_text, pair.dataset_text) == (current.main_text, current.dataset_text):
            version = self.history(name)[-1]
            return SaveReport(info, version, [*notes, "no changes; no new version written"], self._issues(pair))
        version = self._write_version(info.folder, pair, message)
        return SaveReport(self.get(name), version, notes, self._issues(pair))

    def copy(self, name: str, new_name: str, version: int | None = None) -> SaveReport:
        """A new custom profile starting from ``name`` (its newest version, or ``version``)."""
        return self.create(new_name, self.texts(name, version), message=f"copied from {self.get(name).name}")

    def rollback(self, name: str, version: int) -> SaveReport:
        """Make ``version`` the newest again (as a new version; history is kept)."""
        old = self.texts(name, version)
        return self.save(name, old.main_text, old.dataset_text, message=f"rollback to version {version}")

    def delete(self, name: str) -> None:
        shutil.rmtree(self.get(name).folder)

    def export(self, name: str, out_dir: Path, version: int | None = None) -> list[Path]:
        """Write the pair into ``out_dir`` under its original file names, byte for byte."""
        pair = self.texts(name, version)
        if contains_secret(loads(pair.main_text, pair.main_name)):
            raise ProfileError(f"{name!r} still contains a secret; save it again to move the key to the store")
        out_dir = Path(out_dir)
        written = []
        for file_name, text in ((pair.main_name, pair.main_text), (pair.dataset_name, pair.dataset_text)):
            atomic_write_bytes(out_dir / file_name, text.encode("utf-8"))
            written.append(out_dir / file_name)
        return written

    def ensure_shipped(self) -> None:
        """Install the shipped profiles (profiles/*/profile.json in the repo) that are not in the store yet."""
        if self._shipped_checked or self.shipped_dir is None:
            return
        self._shipped_checked = True
        for meta_path in sorted(Path(self.shipped_dir).glob("*/profile.json")):
            try:
                meta = json.loads(meta_path.read_text("utf-8"))
                if (self.root / slugify(meta["name"]) / "profile.json").exists():
                    continue
                folder = meta_path.parent
                pair = ProfileTexts(meta["main"], (folder / meta["main"]).read_bytes().decode("utf-8"),
                                    meta["dataset"], (folder / meta["dataset"]).read_bytes().decode("utf-8"))
            except (OSError, KeyError, ValueError, TypeError):
                continue  # not a profile folder (e.g. assets of another feature)
            self.create(meta["name"], pair, message="shipped with dp-studio", shipped=True,
                        default=bool(meta.get("default")), description=str(meta.get("description", "")))

    # internals -------------------------------------------------------------------------------------------
    def _new_slug(self, name: str) -> str:
        slug = slugify(name)
        if not slug or len(name.strip()) > 80:
            raise ProfileError(f"profile name {name!r} must contain letters or digits (at most 80 characters)")
        if (self.root / slug).exists():
            raise ProfileError(f"a profile named {name!r} already exists; choose another name")
        return slug

    def _without_secrets(self, pair: ProfileTexts) -> tuple[ProfileTexts, list[str]]:
        doc = loads(pair.main_text, pair.main_name)
        stripped = strip_secrets(doc, self.secrets)
        if not stripped:
            return pair, []
        notes = [item.describe() for item in stripped]
        return ProfileTexts(pair.main_name, dumps(doc), pair.dataset_name, pair.dataset_text), notes

    def _issues(self, pair: ProfileTexts) -> list[ConfigIssue]:
        return validate_texts(pair.main_text, pair.dataset_text, main_file=pair.main_name,
                              dataset_file=pair.dataset_name, skip_path_checks=True)

    def _write_version(self, folder: Path, pair: ProfileTexts, message: str) -> ProfileVersion:
        versions = folder / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        existing = self._version_dirs(folder)
        number = int(existing[-1].name) + 1 if existing else 1
        meta = {"version": number, "created": _now(), "message": message}
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=versions))
        try:
            (staging / pair.main_name).write_bytes(pair.main_text.encode("utf-8"))
            (staging / pair.dataset_name).write_bytes(pair.dataset_text.encode("utf-8"))
            (staging / "meta.json").write_text(json.dumps(meta, indent=2), "utf-8")
            os.rename(staging, versions / f"{number:04d}")  # atomic: a version appears whole or not at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ProfileVersion(number, meta["created"], message)

    @staticmethod
    def _version_dirs(folder: Path) -> list[Path]:
        versions = folder / "versions"
        if not versions.is_dir():
            return []
        return sorted((p for p in versions.iterdir() if _VERSION_DIR.match(p.name)), key=lambda p: int(p.name))

    def _version_dir(self, info: ProfileInfo, version: int | None) -> Path:
        folder = info.folder / "versions" / f"{(version or info.version):04d}"
        if not folder.is_dir():
            numbers = ", ".join(str(v.number) for v in self.history(info.name))
            raise ProfileError(f"{info.name!r} has no version {version} (versions: {numbers})")
        return folder

    @staticmethod
    def _version(folder: Path) -> ProfileVersion:
        meta = json.loads((folder / "meta.json").read_text("utf-8"))
        return ProfileVersion(int(meta["version"]), meta["created"], meta.get("message", ""))

    def _info(self, meta_path: Path) -> ProfileInfo:
        meta = json.loads(meta_path.read_text("utf-8"))
        folder = meta_path.parent
        versions = self._version_dirs(folder)
        latest = self._version(versions[-1]) if versions else ProfileVersion(0, meta["created"], "")
        return ProfileInfo(meta["name"], meta["slug"], meta["main"], meta["dataset"], latest.number,
                           latest.created, folder, bool(meta.get("shipped")), bool(meta.get("default")),
                           meta.get("description", ""))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
