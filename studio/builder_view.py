"""The config builder's pure view logic: issues mapped to form fields and lines, field labels and the issue list.

No Gradio here: ``field_props`` returns the keyword arguments of a ``gr.update`` so it can be tested as data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from studio.builder_form import FormField, field_hint, form_pool, inline_toml, specs_for
from trainers.config import MODEL_TYPES, TYPE_NAMES, FieldSpec
from trainers.config.issues import ConfigIssue
from trainers.config.toml_io import join_key, split_key

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")
NOT_SET = "(not set)"


@dataclass(frozen=True)
class Pair:
    """The two file names of the pair being edited (issues name them) and where relative paths resolve."""

    main_name: str = "main.toml"
    dataset_name: str = "dataset.toml"


def type_choices() -> list[tuple[str, str]]:
    """Model-type dropdown choices: ``(label (type), type)`` for all 24 types."""
    return [(f"{info.label} ({name})", name) for name, info in MODEL_TYPES.items()]


def issue_file(issue: ConfigIssue, pair: Pair) -> str | None:
    """'main' or 'dataset' for the file an issue is about (None for other files, e.g. eval configs)."""
    name = issue.file.replace("\\", "/").rpartition("/")[2]
    if name == pair.main_name:
        return "main"
    return "dataset" if name == pair.dataset_name else None


def field_for_issue(issue: ConfigIssue, pair: Pair, dir_index: int) -> str | None:
    """The id of the form field an issue belongs to: the longest dotted prefix of its key that is a field.

    ``eval_datasets[0].config`` lands on ``eval_datasets``; ``directory[2].path`` on ``directory.path`` only
    while the form edits entry 2. None when no field matches (unknown keys, syntax errors).
    """
    file = issue_file(issue, pair)
    try:
        parts = split_key(issue.key)
    except ValueError:
        return None
    if file is None:
        return None
    if file == "dataset" and parts[:1] == ["directory"]:
        if len(parts) < 3 or parts[1] != dir_index:
            return None
        parts = ["directory", *parts[2:]]
    ids = {field.id for field in form_pool()}
    for end in range(len(parts), 0, -1):
        candidate = f"{file}:{join_key(parts[:end])}"
        if candidate in ids:
            return candidate
    return None


def issue_text(issue: ConfigIssue) -> str:
    """The short text shown at a field: ``⚠ message — fix`` (△ for warnings)."""
    mark = "⚠" if issue.is_error else "△ warning:"
    return f"{mark} {issue.message}" + (f" — {issue.fix}" if issue.fix else "")


def field_errors(issues: list[ConfigIssue], pair: Pair, dir_index: int, model_type: str) -> dict[str, str]:
    """Text to show at each visible field that has issues (several issues joined, errors first)."""
    visible = specs_for(model_type)
    out: dict[str, list[str]] = {}
    for issue in sorted(issues, key=lambda i: not i.is_error):
        field_id = field_for_issue(issue, pair, dir_index)
        if field_id in visible:
            out.setdefault(field_id, []).append(issue_text(issue))
    return {field_id: " · ".join(texts) for field_id, texts in out.items()}


def format_issue(issue: ConfigIssue) -> str:
    """``FILE:LINE: key: message — fix`` (the CLI's line, with the fix after a dash)."""
    level = "" if issue.is_error else "warning: "
    fix = f" — {issue.fix}" if issue.fix else ""
    return f"{issue.file}:{issue.line}: {issue.key}: {level}{issue.message}{fix}"


def escape_md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def issues_markdown(issues: list[ConfigIssue], *, paths_checked: bool) -> str:
    """The issue list under the editor: a verdict line, then one bullet per issue (errors first)."""
    errors = sum(issue.is_error for issue in issues)
    warnings = len(issues) - errors
    scope = "full check, paths included" if paths_checked else "paths not checked: press Validate"
    if not issues:
        return f"**✓ valid** ({scope})"
    head = "✗" if errors else "✓"
    verdict = f"**{head} {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}**"
    lines = [f"- {'✗' if i.is_error else '△'} {escape_md(format_issue(i))}"  # ✗ as the verdict counts them
             for i in sorted(issues, key=lambda i: (not i.is_error, i.file, i.line))]
    return "\n".join([f"{verdict} ({scope})", "", *lines])


def field_label(field: FormField, spec: FieldSpec | None, error: str | None) -> str:
    """The key's name, ``*`` when required, ``⚠`` in front when something is wrong with it."""
    required = " *" if spec is not None and spec.required else ""
    mark = "⚠ " if error and error.startswith("⚠") else "△ " if error else ""
    return f"{mark}{field.name}{required}"


def field_info(field: FormField, spec: FieldSpec | None, error: str | None) -> str:
    """The line under the label: the error when there is one, else the key's description (and default)."""
    if error:
        return error
    return spec.description if spec is not None else ""


def placeholder(field: FormField, spec: FieldSpec | None) -> str:
    """The grey text of an empty text field: the default that applies, or how to write a value."""
    default = spec.default if spec is not None else None
    if default not in (None, "", [], ()):
        return f"default: {default if field.widget == 'text' else inline_toml(default)}"
    if field.section == "directory" and f"dataset:{field.name}" in specs_for(TYPE_NAMES[0]):
        return "(inherits the dataset's top level)"
    return field_hint(field)


def field_classes(error: str | None) -> list[str]:
    if not error:
        return ["dp-field"]
    return ["dp-field", "dp-invalid" if error.startswith("⚠") else "dp-warning"]


def error_props(field: FormField, spec: FieldSpec | None, error: str | None) -> dict[str, Any]:
    """The ``gr.update`` keyword arguments that show (or clear) an error at a field."""
    return {"label": field_label(field, spec, error), "info": field_info(field, spec, error),
            "elem_classes": field_classes(error)}


def field_props(field: FormField, model_type: str, value: Any, error: str | None) -> dict[str, Any]:
    """Everything a field shows for a model type: value, visibility, label, info, choices, placeholder."""
    spec = specs_for(model_type).get(field.id)
    props: dict[str, Any] = {"value": value, "visible": spec is not None, **error_props(field, spec, error)}
    if field.widget == "dropdown" and spec is not None:
        props["choices"] = dropdown_choices(spec)
    if field.widget in ("text", "literal"):
        props["placeholder"] = placeholder(field, spec)
    return props


def dropdown_choices(spec: FieldSpec) -> list[tuple[str, str]]:
    """A choice field's options; the empty value removes the key (the default applies)."""
    unset = f"(default: {spec.default})" if spec.default is not None else NOT_SET
    return [(unset, ""), *((choice, choice) for choice in spec.choices or ())]


TRISTATE_CHOICES = [("(inherit)", ""), ("true", "true"), ("false", "false")]


def error_changes(shown: dict[str, str], errors: dict[str, str]) -> set[str]:
    """Field ids whose shown error must change (appear, disappear or differ)."""
    return {fid for fid in set(shown) | set(errors) if shown.get(fid) != errors.get(fid)}


def shows_errors(shown: dict[str, str]) -> bool:
    """Whether any field shows an error (an edit that changes nothing must still re-check to clear it)."""
    return any(text.startswith("⚠") for text in shown.values())


def keep_whitespace(original: str, edited: str) -> str:
    """The editor's text with the original's leading and trailing whitespace.

    Gradio's Code component strips both ends of what it shows; without this, an unchanged file would lose its
    final newline and stop being byte-identical.
    """
    body = edited.strip()
    if not body:
        return edited
    lead = original[: len(original) - len(original.lstrip())]
    trail = original[len(original.rstrip()):] or "\n"
    return lead + body + trail
