"""Bulk caption and tag edits in the dataset browser: pick an operation and a filter, preview every change,
apply, and undo the last apply in one step (the logic is :mod:`trainers.datasets.caption_ops`)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio.user_errors import user_mistake
from trainers.datasets import caption_ops as ops
from trainers.datasets.report import DatasetReport, kind
from trainers.native import archive

OPERATIONS = {
    "add prefix": lambda a, b, rx: ops.add_prefix(a),
    "remove prefix": lambda a, b, rx: ops.remove_prefix(a),
    "add suffix": lambda a, b, rx: ops.add_suffix(a),
    "remove suffix": lambda a, b, rx: ops.remove_suffix(a),
    "find / replace": lambda a, b, rx: ops.replace(a, b, regex=rx),
    "add tag": lambda a, b, rx: ops.add_tag(a),
    "remove tag": lambda a, b, rx: ops.remove_tag(a),
    "rename tag": lambda a, b, rx: ops.rename_tag(a, b),
    "de-duplicate tags": lambda a, b, rx: ops.dedupe_tags(),
    "set trigger word": lambda a, b, rx: ops.set_trigger(a),
}
FILTERS = ["every image", "no caption", "has tag", "bucket", "problem"]
PREVIEW_HEADERS = ["caption file", "before", "after"]


@dataclass
class BulkHandles:
    operation: gr.Dropdown
    text: gr.Textbox
    replacement: gr.Textbox
    regex: gr.Checkbox
    filter: gr.Dropdown
    filter_value: gr.Textbox
    preview_button: gr.Button
    apply_button: gr.Button
    undo_button: gr.Button
    preview: gr.Dataframe
    message: gr.Markdown
    plan: gr.State
    last: gr.State


def render() -> BulkHandles:
    with gr.Accordion("Bulk caption edit (.txt captions)", open=False, elem_id="bulk-accordion"):
        with gr.Row():
            operation = gr.Dropdown(list(OPERATIONS), value="add prefix", label="Operation", elem_id="bulk-op")
            text = gr.Textbox(label="Text / find / tag", elem_id="bulk-text")
            replacement = gr.Textbox(label="Replace with / new tag", elem_id="bulk-replacement")
            regex = gr.Checkbox(label="regex", elem_id="bulk-regex")
        with gr.Row():
            filter_ = gr.Dropdown(FILTERS, value="every image", label="Apply to", elem_id="bulk-filter")
            filter_value = gr.Textbox(label="Tag / bucket (e.g. 1024×1024) / problem (e.g. no trigger)",
                                      elem_id="bulk-filter-value")
        with gr.Row():
            preview_button = gr.Button("Preview", elem_id="bulk-preview")
            apply_button = gr.Button("Apply", variant="primary", elem_id="bulk-apply")
            undo_button = gr.Button("Undo last apply", elem_id="bulk-undo")
        message = gr.Markdown("", elem_id="bulk-message")
        preview = gr.Dataframe(headers=PREVIEW_HEADERS, interactive=False, wrap=True, elem_id="bulk-table")
    return BulkHandles(operation, text, replacement, regex, filter_, filter_value, preview_button, apply_button,
                       undo_button, preview, message, gr.State(None), gr.State(None))


def _selection(report: DatasetReport, how: str, value: str):
    value = (value or "").strip()
    if how in ("has tag", "bucket", "problem") and not value:
        raise user_mistake(f"Apply to '{how}' needs a value: type the {how.split()[-1]} to match.")
    if how == "no caption":
        return ops.has_no_caption
    if how == "has tag":
        return ops.has_tag(value)
    if how == "bucket":
        size = value.replace("x", "×")
        return ops.among(i.path.name for i in report.images if size in (f"{w}×{h}" for w, h in i.buckets))
    if how == "problem":
        return ops.among(i.path.name for i in report.images if value in {kind(x) for x in i.issues})
    return lambda image, caption: True


def preview(report: DatasetReport | None, operation: str, text: str, replacement: str, regex: bool,
            how: str, value: str):
    """Every caption the operation would change, before anything is written."""
    if report is None:
        raise user_mistake("Press Browse first: the bulk edit works on the images listed.")
    try:
        edit = OPERATIONS[operation](text or "", replacement or "", bool(regex))
    except ops.CaptionOpError as exc:
        raise user_mistake(str(exc)) from exc
    editable = [i.path for i in report.images if not i.in_json and not archive.split(i.path)]
    left_out = len(report.images) - len(editable)
    changes = ops.plan(editable, edit, _selection(report, how, value))
    note = (f" {left_out} image(s) whose captions live in a captions.json or an archive are left out."
            if left_out else "")
    return (f"{len(changes)} caption(s) would change. Check them, then **Apply**.{note}",
            ops.preview_rows(changes), changes)


def apply(changes: list | None):
    """Write the previewed changes (a caption edited on disk since the preview is skipped and named)."""
    if not changes:
        raise user_mistake("Nothing to apply: press Preview first (a preview is applied once).")
    outcome = ops.apply(changes)
    return _said("Applied", outcome), [], None, outcome


def undo(last: ops.Outcome | None):
    if last is None or not last.written:
        raise user_mistake("Nothing to undo: no bulk edit applied since the last undo.")
    return _said("Undone", ops.undo(last)), None


def _said(verb: str, outcome: ops.Outcome) -> str:
    text = f"✓ {verb}: {len(outcome.written)} caption file(s) written. Press **Browse** to refresh the checks."
    if outcome.skipped:
        text += "\n\n⚠ Skipped:\n" + "\n".join(f"- {line}" for line in outcome.skipped)
    return text


def wire(h: BulkHandles, report: gr.State) -> None:
    inputs = [report, h.operation, h.text, h.replacement, h.regex, h.filter, h.filter_value]
    h.preview_button.click(preview, inputs=inputs, outputs=[h.message, h.preview, h.plan], api_visibility="private")
    h.apply_button.click(apply, inputs=h.plan, outputs=[h.message, h.preview, h.plan, h.last],
                         api_visibility="private")
    h.undo_button.click(undo, inputs=h.last, outputs=[h.message, h.last], api_visibility="private")
