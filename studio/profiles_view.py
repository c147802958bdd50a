"""The profiles tab's pure view logic: table rows, diff rows and the messages that say what happened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studio.builder_form import inline_toml
from trainers.config.issues import ConfigIssue
from trainers.profiles import DiffEntry, ProfileInfo, ProfileVersion, SaveReport

PROFILE_HEADERS = ["name", "default", "versions", "last saved", "valid"]
HISTORY_HEADERS = ["version", "saved", "message"]
DIFF_HEADERS = ["file", "key", "change", "A", "B"]


def validity(issues: list[ConfigIssue]) -> str:
    """``✓``, ``✓ (2 warnings)`` or ``✗ 3 errors`` for a profile's validation (paths not checked)."""
    errors = sum(issue.is_error for issue in issues)
    warnings = len(issues) - errors
    if errors:
        return f"✗ {errors} error{'s' * (errors != 1)}"
    return f"✓ ({warnings} warning{'s' * (warnings != 1)})" if warnings else "✓"


def short_time(iso: str) -> str:
    """``2026-01-02T03:04:05+00:00`` -> ``2026-01-02 03:04 UTC``."""
    date, _, time = iso.partition("T")
    return f"{date} {time[:5]} UTC" if time else iso


def profile_row(info: ProfileInfo, issues: list[ConfigIssue]) -> list[Any]:
    return [info.name, "★ default" if info.default else "", info.version, short_time(info.updated),
            validity(issues)]


def history_rows(versions: list[ProfileVersion]) -> list[list[Any]]:
    """Newest first."""
    return [[v.number, short_time(v.created), v.message] for v in reversed(versions)]


def version_choices(versions: list[ProfileVersion]) -> list[tuple[str, int]]:
    """Dropdown choices ``("3 · 2026-01-02 03:04 UTC · message", 3)``, newest first."""
    return [(f"{v.number} · {short_time(v.created)} · {v.message}", v.number) for v in reversed(versions)]


def show_value(value: Any) -> str:
    return "(absent)" if value is None else inline_toml(value)


def diff_rows(entries: list[DiffEntry]) -> list[list[str]]:
    return [[e.file, e.key, e.status, show_value(e.left), show_value(e.right)] for e in entries]


def diff_summary(a: str, b: str, entries: list[DiffEntry]) -> str:
    if not entries:
        return f"**{a}** and **{b}** hold the same settings."
    return f"{len(entries)} key{'s' * (len(entries) != 1)} differ between **{a}** (A) and **{b}** (B)."


def name_uploads(text: str, uploads: list[str | None]) -> str:
    """The message with each uploaded file named as the user picked it: Gradio keeps an upload at a temporary
    path (/tmp/gradio/<hash>/main.toml) that means nothing to the user."""
    for upload in filter(None, uploads):
        folder = str(Path(upload).parent)
        text = text.replace(folder + "/", "").replace(folder, "the uploaded files")
    return text


def report_message(action: str, report: SaveReport) -> str:
    """What a create/save/import/rollback did, with the store's notes (e.g. a secret moved) and the verdict."""
    head = f"✓ {action.capitalize()} **{report.profile.name}**, version {report.version.number}."
    lines = [head, *(f"- {note}" for note in report.notes)]
    errors = [issue for issue in report.issues if issue.is_error]
    if errors:
        count = f"{len(errors)} error{'s' * (len(errors) != 1)}"
        lines.append(f"- ⚠ {count} remain: open it in the config builder to fix them (first: {errors[0].format()})")
    return "\n".join(lines)
