"""Read, edit and write TOML without losing a byte of what the user wrote.

tomlkit keeps the whole document (comments, order, quoting, blank lines), so loading and dumping an unchanged
file gives identical bytes, and ``set_value`` changes only the value it is asked to change.
Dotted keys are ``a.b.c`` with ``[N]`` for array entries: ``directory[0].path``, ``eval_datasets[1].config``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import ParseError, TOMLKitError
from tomlkit.items import String, StringType
from tomlkit.toml_document import TOMLDocument

from trainers.config.issues import ConfigParseError
from trainers.files import atomic_write_bytes  # noqa: F401 - re-exported for callers

_SEGMENT = re.compile(r"^([^.\[\]]+)((?:\[\d+\])*)$")


def read_text(path: str | os.PathLike[str]) -> str:
    """The file's text exactly as stored (no newline translation); raise ConfigParseError if unreadable."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigParseError(str(path), 1, 1, f"cannot read the file: {exc}") from exc


MAX_DEPTH = 64  # arrays and tables nested deeper than this are refused: no config needs it, recursion would fail
TOO_DEEP = f"arrays or tables are nested more than {MAX_DEPTH} levels deep; no config needs that, flatten it"


def _depth(data: Any) -> int:
    """How deeply lists and tables nest in parsed data (iterative: never recurses)."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _check_depth(text: str, file: str) -> None:
    """ConfigParseError when ``text`` nests too deeply (a bad-syntax text is left to the caller's parser)."""
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigParseError(file, 1, 1, TOO_DEEP) from None
    except (tomllib.TOMLDecodeError, ValueError):
        return
    if _depth(data) > MAX_DEPTH:
        raise ConfigParseError(file, 1, 1, TOO_DEEP)


def loads(text: str, file: str = "<text>") -> TOMLDocument:
    """Parse TOML text; raise ConfigParseError with line and column on bad syntax (and on absurd nesting)."""
    _check_depth(text, file)
    try:
        return tomlkit.parse(text)
    except RecursionError:
        raise ConfigParseError(file, 1, 1, TOO_DEEP) from None
    except ParseError as exc:
        message = str(exc).split(" at line ")[0].replace("Unexpected character: '\\x00'", "unexpected end of file")
        raise ConfigParseError(file, exc.line, exc.col + 1, message) from exc  # tomlkit columns are 0-based
    except (TOMLKitError, ValueError) as exc:  # e.g. duplicate keys raise other tomlkit errors
        raise ConfigParseError(file, 1, 1, str(exc)) from exc


def load(path: str | os.PathLike[str]) -> TOMLDocument:
    """Read and parse a TOML file."""
    return loads(read_text(path), str(path))


def loads_plain(text: str, file: str = "<text>") -> dict[str, Any]:
    """Parse to plain Python data (stdlib tomllib: several times faster than tomlkit; used for validation).

    On a syntax error, tomlkit's position is reported when it has one (tomllib often says "end of document").
    """
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigParseError(file, 1, 1, TOO_DEEP) from None
    except tomllib.TOMLDecodeError as exc:
        loads(text, file)  # raises ConfigParseError with tomlkit's line and column when tomlkit also fails
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line, column = (int(where.group(1)), int(where.group(2))) if where else (text.count("\n") + 1, 1)
        message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        raise ConfigParseError(file, line, column, message) from exc
    if _depth(data) > MAX_DEPTH:
        raise ConfigParseError(file, 1, 1, TOO_DEEP)
    return data


def dumps(doc: TOMLDocument) -> str:
    """The document as text; byte-identical to the input when nothing was edited."""
    return doc.as_string()


def to_plain(doc: TOMLDocument) -> dict[str, Any]:
    """Plain Python dicts/lists/scalars (what diffusion-pipe sees after ``toml.load``)."""
    return doc.unwrap()


def save(path: str | os.PathLike[str], content: TOMLDocument | str) -> None:
    """Write atomically: a temp file in the same folder, fsync, then ``os.replace``."""
    text = content if isinstance(content, str) else dumps(content)
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def split_key(dotted: str) -> list[str | int]:
    """``directory[0].path`` -> ``['directory', 0, 'path']``; raise ValueError on a malformed key."""
    parts: list[str | int] = []
    for segment in dotted.split("."):
        match = _SEGMENT.match(segment.strip())
        if not match:
            raise ValueError(f"malformed dotted key {dotted!r}")
        parts.append(match.group(1))
        parts.extend(int(index) for index in re.findall(r"\[(\d+)\]", match.group(2)))
    return parts


def join_key(parts: list[str | int] | tuple[str | int, ...]) -> str:
    """Inverse of ``split_key``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def get_value(doc: Any, dotted: str, default: Any = None) -> Any:
    """The value at a dotted key (tomlkit item or plain), or ``default`` when any step is missing."""
    node = doc
    for part in split_key(dotted):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return default
    return node


def set_value(doc: TOMLDocument, dotted: str, value: Any) -> None:
    """Set one value, creating missing tables; comments, order and quoting elsewhere stay untouched.

    A string replacing a literal ('single-quoted') string stays literal when it can.
    """
    parts = split_key(dotted)
    parent = _parent(doc, parts, create=True)
    last = parts[-1]
    old = _child(parent, last)
    parent[last] = _styled_like(old, value)


def delete_value(doc: TOMLDocument, dotted: str) -> bool:
    """Remove a key; return False when it was not there."""
    parts = split_key(dotted)
    try:
        parent = _parent(doc, parts, create=False)
        del parent[parts[-1]]
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _parent(doc: TOMLDocument, parts: list[str | int], create: bool) -> Any:
    node: Any = doc
    for part in parts[:-1]:
        child = _child(node, part)
        if child is None:
            if not create or isinstance(part, int):
                raise KeyError(part)
            node[part] = tomlkit.table()
            child = node[part]
        node = child
    return node


def _child(node: Any, part: str | int) -> Any:
    try:
        return node[part]
    except (KeyError, IndexError, TypeError):
        return None


def _styled_like(old: Any, value: Any) -> Any:
    if isinstance(old, String) and isinstance(value, str) and old.type == StringType.SLL:
        if "'" not in value and "\n" not in value:
            return tomlkit.string(value, literal=True)
    return value


def walk_leaves(node: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str, Any]]:
    """Flatten plain dicts/lists into ``(dotted key, value)``; lists of scalars stay one leaf."""
    if isinstance(node, dict):
        out: list[tuple[str, Any]] = []
        for key, value in node.items():
            out.extend(walk_leaves(value, (*prefix, str(key))))
        return out
    if isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        return [leaf for index, item in enumerate(node) for leaf in walk_leaves(item, (*prefix, index))]
    return [(join_key(prefix), node)]
