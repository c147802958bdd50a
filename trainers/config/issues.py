"""What a validation problem looks like: file, line, dotted key, message and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one config file.

    ``key`` is the dotted TOML key (``model.transformer_path``, ``directory[0].path``); ``line`` is 1-based
    and points at the key, or at its table header (or line 1) when the key is missing.
    """

    file: str
    line: int
    key: str
    message: str
    fix: str = ""
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def format(self) -> str:
        """``FILE:LINE: key: message (fix: ...)``, the line the CLI prints."""
        level = "" if self.is_error else "warning: "
        fix = f" (fix: {self.fix})" if self.fix else ""
        return f"{self.file}:{self.line}: {self.key}: {level}{self.message}{fix}"


class ConfigParseError(ValueError):
    """A file is not valid TOML (or not readable); carries the 1-based line and column."""

    def __init__(self, file: str, line: int, column: int, message: str) -> None:
        self.file, self.line, self.column, self.message = file, line, column, message
        super().__init__(self.format())

    def format(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: parse error: {self.message}"


def errors_only(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """The issues that make a config invalid (warnings dropped)."""
    return [issue for issue in issues if issue.is_error]


class Reporter:
    """Collects issues for one file, looking up each key's line in that file's text."""

    def __init__(self, file: str, text: str) -> None:
        from trainers.config.locate import KeyLocator  # local: keeps this module import-light

        self.file = file
        self.locator = KeyLocator(text)
        self.issues: list[ConfigIssue] = []

    def error(self, key: str, message: str, fix: str = "") -> None:
        self.add(key, message, fix, "error")

    def warning(self, key: str, message: str, fix: str = "") -> None:
        self.add(key, message, fix, "warning")

    def add(self, key: str, message: str, fix: str, severity: Severity) -> None:
        line = self.locator.line_of(key)
        shown = _shown_key(key)
        if shown != key:  # an empty key name ("" = ...) would print as a blank
            message = f"{message} (the key's name is empty: \"\")"
            fix = "remove the line with the empty key name \"\", or give it a name"
        issue = ConfigIssue(self.file, line, shown, message, fix, severity)
        if issue not in self.issues:
            self.issues.append(issue)


def _shown_key(key: str) -> str:
    """A dotted key with each empty part written as ``""`` (``model.""``), as TOML spells an empty name."""
    parts = key.split(".")
    return ".".join('""' if part == "" else part for part in parts) if "" in parts else key
