"""Bulk caption and tag edits on ``.txt`` captions: plan (a preview of every change), apply, undo.

Pure text operations build a :class:`Plan` of :class:`Change` (file, caption before, caption after). Applying it
writes each file atomically, but only where the file on disk still holds the caption the preview showed; a file
edited meanwhile is skipped and named. The applied changes are the one-step undo: it writes each caption back
where the file still holds what was applied (a caption file the edit created is removed again).

Tags are the comma-separated parts of a caption, compared after trimming spaces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from trainers.files import atomic_write_text

Edit = Callable[[str], str]


class CaptionOpError(ValueError):
    """An operation's input is unusable; the message names the field and the fix."""


@dataclass(frozen=True)
class Change:
    caption_file: Path
    before: str | None  # None: the image had no caption file
    after: str | None  # None: the caption file is removed (only in an undo)


@dataclass
class Outcome:
    written: list[Change] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: why"

    def undo_plan(self) -> list[Change]:
        """The changes that put every written file back as it was."""
        return [Change(c.caption_file, c.after, c.before) for c in self.written]


def caption_file_of(image: Path) -> Path:
    return image.with_suffix(".txt")


def read_caption(caption_file: Path) -> str | None:
    try:
        return caption_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def split_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def _need(value: str, name: str) -> str:
    if not value:
        raise CaptionOpError(f"{name} is empty: type the text to use")
    return value


def add_prefix(text: str) -> Edit:
    _need(text, "prefix")
    return lambda c: c if c.startswith(text) else text + c


def remove_prefix(text: str) -> Edit:
    _need(text, "prefix")
    return lambda c: c[len(text):] if c.startswith(text) else c


def add_suffix(text: str) -> Edit:
    _need(text, "suffix")
    return lambda c: c if c.endswith(text) else c + text


def remove_suffix(text: str) -> Edit:
    _need(text, "suffix")
    return lambda c: c[:-len(text)] if c.endswith(text) else c


def replace(find: str, replacement: str, regex: bool = False) -> Edit:
    _need(find, "find")
    if not regex:
        return lambda c: c.replace(find, replacement)
    try:
        pattern = re.compile(find)
    except re.error as exc:
        raise CaptionOpError(f"find is not a valid regular expression ({exc}): fix it or untick regex") from exc
    try:
        pattern.sub(replacement, "")
    except (re.error, IndexError) as exc:
        raise CaptionOpError(f"replacement refers to a group the pattern lacks ({exc})") from exc
    return lambda c: pattern.sub(replacement, c)


def add_tag(tag: str) -> Edit:
    tag = _need(tag.strip(), "tag")
    return lambda c: c if tag in split_tags(c) else join_tags([*split_tags(c), tag])


def remove_tag(tag: str) -> Edit:
    tag = _need(tag.strip(), "tag")
    return lambda c: join_tags(t for t in split_tags(c) if t != tag) if tag in split_tags(c) else c


def rename_tag(old: str, new: str) -> Edit:
    old, new = _need(old.strip(), "tag"), _need(new.strip(), "new tag")
    return lambda c: join_tags(new if t == old else t for t in split_tags(c)) if old in split_tags(c) else c


def dedupe_tags() -> Edit:
    def edit(caption: str) -> str:
        tags = split_tags(caption)
        unique = list(dict.fromkeys(tags))
        return join_tags(unique) if len(unique) < len(tags) else caption
    return edit


def set_trigger(word: str) -> Edit:
    """The trigger word as the first tag, once (moved there if it is elsewhere)."""
    word = _need(word.strip(), "trigger word")
    return lambda c: join_tags([word, *(t for t in split_tags(c) if t != word)])


def plan(images: Iterable[Path], edit: Edit, keep: Callable[[Path, str | None], bool] = lambda p, c: True,
         ) -> list[Change]:
    """Every caption the edit would change, among the images ``keep`` selects (given image and caption)."""
    changes = []
    for image in images:
        caption_file = caption_file_of(image)
        before = read_caption(caption_file)
        if not keep(image, before):
            continue
        after = edit(before or "").strip()
        if after != (before or "") and (after or before is not None):
            changes.append(Change(caption_file, before, after))
    return changes


def has_no_caption(image: Path, caption: str | None) -> bool:
    return not caption


def has_tag(tag: str) -> Callable[[Path, str | None], bool]:
    tag = _need(tag.strip(), "filter tag")
    return lambda image, caption: tag in split_tags(caption or "")


def among(names: Iterable[str]) -> Callable[[Path, str | None], bool]:
    """Images named in ``names`` (e.g. those in a bucket or with a problem, from the dataset report)."""
    chosen = set(names)
    return lambda image, caption: image.name in chosen


def apply(changes: Iterable[Change]) -> Outcome:
    """Write each change whose file still holds ``before``; skip and name the others."""
    outcome = Outcome()
    for change in changes:
        now = read_caption(change.caption_file)
        if now != change.before:
            outcome.skipped.append(f"{change.caption_file.name}: changed on disk since the preview; "
                                   "preview again to include it")
            continue
        if change.after is None:
            change.caption_file.unlink(missing_ok=True)
        else:
            atomic_write_text(change.caption_file, change.after + "\n")
        outcome.written.append(change)
    return outcome


def undo(outcome: Outcome) -> Outcome:
    """The one-step undo of an applied outcome (files edited since are skipped and named)."""
    return apply(outcome.undo_plan())


def preview_rows(changes: Iterable[Change]) -> list[list[str]]:
    """Rows for a preview table: file, caption before, caption after."""
    return [[c.caption_file.name, c.before if c.before is not None else "(no caption file)",
             c.after if c.after is not None else "(removed)"] for c in changes]
