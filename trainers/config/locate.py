"""Line numbers of dotted keys in TOML text, so every issue can say ``FILE:LINE``.

tomlkit keeps no positions, so this is a small scanner over the text: table headers, ``[[array]]`` entries
(counted), ``key = value`` lines (values spanning lines are skipped whole) and the start of each element of an
array value (``eval_datasets[1]``, ``resolutions[3]``). It only runs on text tomlkit already parsed.
"""

from __future__ import annotations

import re

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"[^\"]*\"|'[^']*'"
_KEY = rf"(?:{_BARE}|{_QUOTED})(?:\s*\.\s*(?:{_BARE}|{_QUOTED}))*"
_KEY_LINE = re.compile(rf"^({_KEY})\s*=(.*)$")
_AOT_HEADER = re.compile(rf"^\[\[\s*({_KEY})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\[\s*({_KEY})\s*\]")


class KeyLocator:
    """Maps dotted keys to 1-based lines; unknown keys fall back to their nearest known parent, then 1."""

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        self._scan(text.split("\n"))

    def line_of(self, dotted: str) -> int:
        key = dotted
        while key:
            if key in self.lines:
                return self.lines[key]
            key = _parent_key(key)
        return 1

    def _record(self, key: str, line: int) -> None:
        self.lines.setdefault(key, line)
        parent = _parent_key(key)
        while parent:
            self.lines.setdefault(parent, line)
            parent = _parent_key(parent)

    def _scan(self, lines: list[str]) -> None:
        prefix = ""
        aot_counts: dict[str, int] = {}
        index = 0
        while index < len(lines):
            stripped = lines[index].strip()
            if aot := _AOT_HEADER.match(stripped):
                name = _normalise(aot.group(1))
                aot_counts[name] = aot_counts.get(name, -1) + 1
                prefix = f"{name}[{aot_counts[name]}]"
                self._record(prefix, index + 1)
            elif table := _TABLE_HEADER.match(stripped):
                prefix = _normalise(table.group(1))
                self._record(prefix, index + 1)
            elif key_line := _KEY_LINE.match(stripped):
                full = _join(prefix, _normalise(key_line.group(1)))
                self._record(full, index + 1)
                index = self._scan_value(full, lines, index, key_line.group(2))
            index += 1

    def _scan_value(self, key: str, lines: list[str], start: int, first: str) -> int:
        """Walk one value (maybe multi-line); record array element lines; return its last line index."""
        scanner = _ValueScanner()
        line_index, text = start, first
        while True:
            for element in scanner.feed(text):
                self._record(f"{key}[{element}]", line_index + 1)
            if scanner.done() or line_index + 1 >= len(lines):
                return line_index
            line_index += 1
            text = lines[line_index]


class _ValueScanner:
    """Tracks brackets, strings and comments across lines of one TOML value."""

    def __init__(self) -> None:
        self.depth = 0
        self.quote: str | None = None  # one of ' " ''' """ while inside a string
        self.elements = 0
        self.expect_element = False
        self.started = False
        self.outer = ""  # the first bracket seen: elements are counted only inside an outer array

    def done(self) -> bool:
        return self.started and self.depth == 0 and self.quote is None

    def feed(self, text: str) -> list[int]:
        found: list[int] = []
        pos = 0
        while pos < len(text):
            if self.quote is not None:
                pos = self._in_string(text, pos)
                continue
            char = text[pos]
            if char == "#":
                break
            if not char.isspace() and self.depth == 1 and self.expect_element and char not in ",]}":
                found.append(self.elements)
                self.expect_element = False
            pos = self._structural(text, pos, char)
        return found

    def _structural(self, text: str, pos: int, char: str) -> int:
        if char in "\"'":
            triple = text[pos : pos + 3]
            self.quote = triple if triple in ('"""', "'''") else char
            self.started = True
            return pos + len(self.quote)
        if char in "[{":
            self.depth += 1
            self.started = True
            if self.depth == 1:
                self.outer = char
                self.expect_element = char == "["
        elif char in "]}":
            self.depth = max(0, self.depth - 1)
        elif char == "," and self.depth == 1 and self.outer == "[":
            self.elements += 1
            self.expect_element = True
        elif not char.isspace():
            self.started = True
        return pos + 1

    def _in_string(self, text: str, pos: int) -> int:
        quote = self.quote or ""
        if quote.startswith('"') and text[pos] == "\\":
            return pos + 2
        if text.startswith(quote, pos):
            self.quote = None
            return pos + len(quote)
        return pos + 1


def _normalise(raw: str) -> str:
    parts = re.findall(rf"{_BARE}|{_QUOTED}", raw)
    return ".".join(part.strip("\"'") for part in parts)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _parent_key(key: str) -> str:
    if key.endswith("]"):
        return key[: key.rfind("[")]
    return key.rpartition(".")[0]
