"""The config builder's form as pure data: which widget each key gets, and form values <-> TOML documents.

No Gradio here. The form is a fixed pool of widgets, one per (file, key) that any of the 24 model types reads
(``form_pool``); a model type shows the subset ``form_fields`` lists for it. Values travel as what the widget
holds: a bool for checkboxes, the raw string for text and path fields, a TOML literal (``2.5e-4``,
``[512, 768]``, ``'unsloth'``) for numbers and structured values. A form edit writes only the keys whose widget
value differs from what the document says, through ``toml_io.set_value``, so comments and layout elsewhere stay.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Item
from tomlkit.toml_document import TOMLDocument

from trainers.config import TYPE_NAMES, FieldSpec, form_fields
from trainers.config.toml_io import delete_value, get_value, set_value

# (file, section) in form order, with the accordion titles the builder shows.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("main", "", "Training (top level of the main TOML)"), ("main", "model", "[model]"),
    ("main", "adapter", "[adapter]"), ("main", "optimizer", "[optimizer]"),
    ("main", "monitoring", "[monitoring]"), ("main", "studio", "[studio] (dp-studio only)"),
    ("dataset", "", "Dataset (top level of the dataset TOML)"), ("dataset", "directory", "Dataset [[directory]]"),
)
TEXT_TYPES = {"str", "file", "dir", "path", "output_dir"}
UNSET: Any = object()  # a widget value meaning "remove the key"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class FormField:
    """One widget of the pool. ``key`` is FieldSpec's dotted key (``directory.path`` for every [[directory]])."""

    file: str
    section: str
    key: str
    type: str
    widget: str  # checkbox | tristate | dropdown | text | literal
    default: Any = None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.key}"

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    def doc_key(self, dir_index: int) -> str:
        """The key in the document: ``directory.path`` -> ``directory[<dir_index>].path``."""
        return f"directory[{dir_index}].{self.name}" if self.section == "directory" else self.key


class FieldInputError(ValueError):
    """What the user typed into a field cannot be written as TOML; the message says how to write it."""


def widget_for(spec: FieldSpec) -> str:
    """The widget kind for a field: bools are checkboxes (or true/false/inherit), choices drop down."""
    if spec.type == "bool":
        return "checkbox" if spec.default is not None else "tristate"
    if spec.type == "choice":
        return "dropdown"
    return "text" if spec.type in TEXT_TYPES else "literal"


@functools.cache
def form_pool() -> tuple[FormField, ...]:
    """Every field any model type shows (``model.type`` excluded: the builder has its own picker), by section."""
    seen: dict[tuple[str, str], FieldSpec] = {}
    for name in TYPE_NAMES:
        for spec in form_fields(name):
            if spec.key != "model.type":
                seen.setdefault((spec.file, spec.key), spec)
    order = {(file, section): i for i, (file, section, _) in enumerate(SECTIONS)}
    specs = sorted(seen.values(), key=lambda s: order[(s.file, s.section)])  # stable: keeps first-seen order
    return tuple(FormField(s.file, s.section, s.key, s.type, widget_for(s), s.default) for s in specs)


@functools.cache
def specs_for(model_type: str) -> dict[str, FieldSpec]:
    """The fields ``model_type`` reads, by field id; for an unknown type, the fields every type shares."""
    if model_type in TYPE_NAMES:
        return {f"{s.file}:{s.key}": s for s in form_fields(model_type) if s.key != "model.type"}
    shared = set.intersection(*(set(specs_for(name)) for name in TYPE_NAMES))
    return {fid: spec for fid, spec in specs_for(TYPE_NAMES[0]).items() if fid in shared}


def model_type_of(main_doc: Any) -> str:
    """``[model].type`` of a main document ('' when missing or not a string)."""
    value = get_value(main_doc, "model.type")
    return str(value) if isinstance(value, str) else ""


def inline_toml(value: Any) -> str:
    """One-line TOML for a value; tomlkit items keep their spelling (``2.5e-4`` stays ``2.5e-4``)."""
    if isinstance(value, dict):
        pairs = (f"{k if _BARE_KEY.match(str(k)) else repr(str(k))} = {inline_toml(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(inline_toml(v) for v in value) + "]"
    if isinstance(value, str) and not isinstance(value, Item) and "'" not in value and "\n" not in value:
        return f"'{value}'"  # literal strings, as diffusion-pipe's examples write them
    item = value if isinstance(value, Item) else tomlkit.item(value)
    return item.as_string().strip()


def widget_value(field: FormField, item: Any, default: Any = None) -> Any:
    """What the widget shows for the document's ``item`` (None when the key is absent)."""
    plain = item.unwrap() if isinstance(item, Item) else item
    if field.widget == "checkbox":
        return plain if isinstance(plain, bool) else bool(default)
    if item is None:
        return ""
    if field.widget == "tristate" and isinstance(plain, bool):
        return "true" if plain else "false"
    if field.widget in ("dropdown", "text") and isinstance(plain, str):
        return plain
    return inline_toml(item)


def parse_literal(text: str) -> Any:
    """A TOML value typed into a field, as a tomlkit item (so ``2.5e-4`` is written as typed)."""
    try:
        doc = tomlkit.parse(f"v = {text}\n")
    except (TOMLKitError, ValueError) as exc:
        raise FieldInputError(f"{text!r} is not a TOML value ({str(exc).split(' at line ')[0]})") from exc
    if list(doc) != ["v"]:
        raise FieldInputError(f"{text!r} is more than one TOML value")
    return doc["v"]


def parse_widget(field: FormField, value: Any) -> Any:
    """The TOML value for a widget value, ``UNSET`` for an empty field; FieldInputError when unparseable."""
    if field.widget == "checkbox":
        return bool(value)
    text = "" if value is None else str(value)
    if field.widget in ("dropdown", "text"):
        return text if text else UNSET
    if not text.strip():
        return UNSET
    if field.widget == "tristate" and text in ("true", "false"):
        return text == "true"
    return parse_literal(text.strip())


def field_hint(field: FormField) -> str:
    """How to write a value for fields typed as TOML literals (the placeholder of the text box)."""
    examples = {"int": "a whole number, e.g. 10", "float": "a number, e.g. 1e-4",
                "list[resolution]": "e.g. [512] or [[512, 768]]", "batch_size": "e.g. 4 or [[512, 4], [1024, 1]]",
                "activation_checkpointing": "true or 'unsloth'", "list[table]": "e.g. [{name = 'val', config = 'x.toml'}]",
                "list[str]": "e.g. ['a prompt', 'another']", "list[int]": "e.g. [42, 7]"}
    if field.widget != "literal":
        return ""
    return examples.get(field.type, "a TOML value, e.g. [1, 2] or 'text'")


def form_values(main_doc: Any, dataset_doc: Any, model_type: str, dir_index: int) -> dict[str, Any]:
    """The value of every widget in the pool for the documents (hidden fields too, so the form stays in sync)."""
    specs = specs_for(model_type)
    out = {}
    for field in form_pool():
        doc = main_doc if field.file == "main" else dataset_doc
        default = specs[field.id].default if field.id in specs else field.default
        out[field.id] = widget_value(field, get_value(doc, field.doc_key(dir_index)), default)
    return out


def same_value(field: FormField, a: Any, b: Any) -> bool:
    """Whether two widget values are the same (Gradio sends None for an empty text box)."""
    if field.widget == "checkbox":
        return bool(a) == bool(b)
    return ("" if a is None else str(a)) == ("" if b is None else str(b))


def apply_form(main_doc: TOMLDocument, dataset_doc: TOMLDocument, dir_index: int,
               values: dict[str, Any], *, remove_empty: bool = True) -> dict[str, str]:
    """Write into the documents every visible field whose value differs from theirs; returns input errors by id.

    Only the changed keys are touched (``set_value``/``delete_value``), so comments and order survive. An emptied
    text field removes its key only with ``remove_empty`` (the user left the field): mid-edit, "select all,
    Backspace, type" keeps the key where it is in the file.
    """
    model_type = model_type_of(main_doc)
    current = form_values(main_doc, dataset_doc, model_type, dir_index)
    errors: dict[str, str] = {}
    for field in form_pool():
        if field.id not in specs_for(model_type) or field.id not in values:
            continue
        if same_value(field, values[field.id], current[field.id]):
            continue
        try:
            parsed = parse_widget(field, values[field.id])
        except FieldInputError as exc:
            errors[field.id] = input_error(field, values[field.id], exc)
            continue
        if parsed is UNSET and not remove_empty and field.widget != "dropdown":
            continue
        write_field(main_doc if field.file == "main" else dataset_doc, field, dir_index, parsed)
    return errors


def input_error(field: FormField, value: Any, exc: FieldInputError) -> str:
    """The text shown at a field whose input cannot be written: what is wrong, then how to write it."""
    if field.type in ("int", "float"):
        return f"⚠ {str(value)!r} is not a number — type {field_hint(field)}"
    return f"⚠ {exc} — write it as TOML ({field_hint(field)}); quote text 'like this'"


def write_field(doc: TOMLDocument, field: FormField, dir_index: int, value: Any) -> None:
    """Set (or with ``UNSET`` remove) one field; a [[directory]] entry is created when the form needs it."""
    key = field.doc_key(dir_index)
    if value is UNSET:
        delete_value(doc, key)
        return
    if field.section == "directory":
        ensure_directory(doc, dir_index)
    set_value(doc, key, value)


def ensure_directory(doc: TOMLDocument, index: int) -> None:
    """Make sure ``[[directory]]`` entry ``index`` exists (appending empty entries)."""
    entries = doc.get("directory")
    if entries is None:
        doc.append("directory", tomlkit.aot())
        entries = doc["directory"]
    while len(entries) <= index:
        entries.append(tomlkit.table())


def directory_count(dataset_doc: Any) -> int:
    entries = get_value(dataset_doc, "directory")
    return len(entries) if isinstance(entries, list) else 0


def directory_choices(dataset_doc: Any) -> list[tuple[str, int]]:
    """Dropdown choices for the [[directory]] entry the form edits: ``(label, index)``; at least entry 1."""
    out = []
    for index in range(max(1, directory_count(dataset_doc))):
        path = get_value(dataset_doc, f"directory[{index}].path")
        out.append((f"{index + 1}: {path}" if isinstance(path, str) else f"{index + 1}", index))
    return out
