"""Key-by-key differences between two profiles (or two versions of one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from trainers.config.secrets import redact_plain
from trainers.config.toml_io import loads, to_plain, walk_leaves
from trainers.profiles.store import ProfileStore, ProfileTexts

MISSING: Any = None


@dataclass(frozen=True)
class DiffEntry:
    """One dotted key whose value differs; ``left``/``right`` are None where the key is absent."""

    file: Literal["main", "dataset"]
    key: str
    status: Literal["changed", "added", "removed"]
    left: Any = None
    right: Any = None

    def format(self) -> str:
        if self.status == "added":
            return f"{self.file}: {self.key}: (absent) -> {self.right!r}"
        if self.status == "removed":
            return f"{self.file}: {self.key}: {self.left!r} -> (absent)"
        return f"{self.file}: {self.key}: {self.left!r} -> {self.right!r}"


def diff_texts(left: ProfileTexts, right: ProfileTexts) -> list[DiffEntry]:
    """Differences of two config pairs, main file first, keys in the left file's order."""
    out: list[DiffEntry] = []
    for file, a, b in (("main", left.main_text, right.main_text), ("dataset", left.dataset_text,
                                                                  right.dataset_text)):
        out += _diff_docs(file, dict(walk_leaves(redact_plain(to_plain(loads(a))))),
                          dict(walk_leaves(redact_plain(to_plain(loads(b))))))
    return out


def diff_profiles(store: ProfileStore, a: str, b: str, version_a: int | None = None,
                  version_b: int | None = None) -> list[DiffEntry]:
    """Differences between profile ``a`` and profile ``b`` (or versions of the same profile)."""
    return diff_texts(store.texts(a, version_a), store.texts(b, version_b))


def _diff_docs(file: Literal["main", "dataset"], left: dict[str, Any], right: dict[str, Any]) -> list[DiffEntry]:
    out = []
    for key in [*left, *(k for k in right if k not in left)]:
        if key not in right:
            out.append(DiffEntry(file, key, "removed", left[key], MISSING))
        elif key not in left:
            out.append(DiffEntry(file, key, "added", MISSING, right[key]))
        elif _normal(left[key]) != _normal(right[key]):
            out.append(DiffEntry(file, key, "changed", left[key], right[key]))
    return out


def _normal(value: Any) -> Any:
    """Compare values as TOML means them: 1 == 1.0 is a change of type, so keep the type in the comparison."""
    if isinstance(value, list):
        return [type(value).__name__, [_normal(item) for item in value]]
    return (type(value).__name__, value)
