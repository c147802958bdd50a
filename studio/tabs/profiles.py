"""Profiles: list, open in the builder, history with rollback, key-by-key diff, import and export as a zip."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import gradio as gr

from studio import profiles_view as pv
from studio.services import Services
from studio.tabs import builder
from trainers.config.issues import ConfigParseError
from trainers.config.toml_io import loads, read_text
from trainers.profiles import (
    ProfileError,
    ProfileStore,
    ProfileTexts,
    SaveReport,
    diff_profiles,
    export_zip,
    import_path,
    slugify,
)

NEWEST = [("newest", 0)]


@dataclass
class ProfilesHandles:
    refresh: gr.Button
    table: gr.Dataframe
    selected: gr.Dropdown
    open_builder: gr.Button
    export: gr.Button
    download: gr.DownloadButton
    message: gr.Markdown
    history: gr.Dataframe
    version: gr.Dropdown
    rollback: gr.Button
    diff_a: gr.Dropdown
    version_a: gr.Dropdown
    diff_b: gr.Dropdown
    version_b: gr.Dropdown
    diff_run: gr.Button
    diff_note: gr.Markdown
    diff_table: gr.Dataframe
    import_main: gr.File
    import_dataset: gr.File
    import_name: gr.Textbox
    import_run: gr.Button


def render(services: Services) -> ProfilesHandles:
    with gr.Row():
        refresh = gr.Button("↻ Refresh", size="sm", scale=0, elem_id="profiles-refresh")
    table = gr.Dataframe(headers=pv.PROFILE_HEADERS, interactive=False, elem_id="profiles-table")
    with gr.Row():
        selected = gr.Dropdown(label="Profile", choices=[], allow_custom_value=True, scale=3,
                               elem_id="profiles-selected")
        open_builder = gr.Button("✎ Open in builder", scale=1, elem_id="profiles-open")
        export = gr.Button("⇩ Export as zip", scale=1, elem_id="profiles-export")
        download = gr.DownloadButton("Download", visible=False, scale=1, elem_id="profiles-download")
    message = gr.Markdown("", elem_id="profiles-message")
    with gr.Accordion("History and rollback", open=True):
        history = gr.Dataframe(headers=pv.HISTORY_HEADERS, interactive=False, elem_id="profiles-history")
        with gr.Row():
            version = gr.Dropdown(label="Version", choices=[], scale=3, elem_id="profiles-version")
            rollback = gr.Button("↶ Roll back to this version", scale=1, elem_id="profiles-rollback")
    with gr.Accordion("Diff two profiles (or two versions)", open=True):
        with gr.Row():
            diff_a = gr.Dropdown(label="A", choices=[], allow_custom_value=True, elem_id="profiles-diff-a")
            version_a = gr.Dropdown(label="A version", choices=NEWEST, value=0, elem_id="profiles-diff-va")
            diff_b = gr.Dropdown(label="B", choices=[], allow_custom_value=True, elem_id="profiles-diff-b")
            version_b = gr.Dropdown(label="B version", choices=NEWEST, value=0, elem_id="profiles-diff-vb")
        diff_run = gr.Button("Compare", elem_id="profiles-diff-run")
        diff_note = gr.Markdown("", elem_id="profiles-diff-note")
        diff_table = gr.Dataframe(headers=pv.DIFF_HEADERS, interactive=False, elem_id="profiles-diff")
    with gr.Accordion("Import", open=True):
        with gr.Row():
            import_main = gr.File(label="Main TOML (or a .zip holding the pair)", file_types=[".toml", ".zip"],
                                  type="filepath", elem_id="profiles-import-main")
            import_dataset = gr.File(label="Dataset TOML (optional)", file_types=[".toml"], type="filepath",
                                     elem_id="profiles-import-dataset")
        with gr.Row():
            import_name = gr.Textbox(label="Name (default: the file's name)", scale=3,
                                     elem_id="profiles-import-name")
            import_run = gr.Button("Import", variant="primary", scale=1, elem_id="profiles-import")
    return ProfilesHandles(refresh, table, selected, open_builder, export, download, message, history, version,
                           rollback, diff_a, version_a, diff_b, version_b, diff_run, diff_note, diff_table,
                           import_main, import_dataset, import_name, import_run)


# handlers ------------------------------------------------------------------------------------------------
def list_profiles() -> list[dict]:
    """Every profile: name, default, versions, last saved, and whether it validates (paths not checked)."""
    store = ProfileStore()
    out = []
    for info in store.list():
        issues = store.validate(info.name)
        out.append({"name": info.name, "default": info.default, "versions": info.version,
                    "updated": info.updated, "valid": pv.validity(issues), "description": info.description})
    return out


def refresh_all(selected: str | None = None) -> tuple:
    """Table, the three profile pickers, and the selected profile's history."""
    rows = list_profiles()
    names = [row["name"] for row in rows]
    table = [[r["name"], "★ default" if r["default"] else "", r["versions"], pv.short_time(r["updated"]),
              r["valid"]] for r in rows]
    pick = selected if selected in names else (names[0] if names else None)
    pickers = [gr.update(choices=names, value=pick)] + [gr.update(choices=names)] * 2
    return (table, *pickers, *history_of(pick))


def history_of(name: str | None) -> tuple:
    if not name:
        return [], gr.update(choices=[], value=None)
    try:
        versions = ProfileStore().history(name)
    except ProfileError:
        return [], gr.update(choices=[], value=None)
    choices = pv.version_choices(versions)
    return pv.history_rows(versions), gr.update(choices=choices, value=choices[0][1] if choices else None)


def version_picker(name: str | None) -> Any:
    try:
        choices = NEWEST + pv.version_choices(ProfileStore().history(name)) if name else NEWEST
    except ProfileError:
        choices = NEWEST
    return gr.update(choices=choices, value=0)


def on_diff(a: str | None, version_a: int | None, b: str | None, version_b: int | None) -> tuple[str, list]:
    if not a or not b:
        return "⚠ Pick two profiles (or the same one twice with two versions).", []
    try:
        entries = diff_profiles(ProfileStore(), a, b, version_a or None, version_b or None)
    except (ProfileError, ConfigParseError) as exc:
        return f"⚠ {exc}", []
    label = lambda name, v: f"{name} v{v}" if v else name  # noqa: E731
    return pv.diff_summary(label(a, version_a), label(b, version_b), entries), pv.diff_rows(entries)


def on_rollback(name: str | None, version: int | None) -> tuple:
    if not name or not version:
        return ("⚠ Pick a profile and a version first.", *refresh_all(name))
    try:
        report = ProfileStore().rollback(name, int(version))
    except ProfileError as exc:
        return (f"⚠ {exc}", *refresh_all(name))
    return (pv.report_message(f"rolled back to version {version}: saved", report), *refresh_all(name))


def import_upload(main_file: str | None, dataset_file: str | None, name: str) -> SaveReport:
    """Import an uploaded main TOML (with the uploaded dataset TOML, or the one it names) or a zip."""
    if not main_file:
        raise ProfileError("upload a main TOML or a zip first")
    main_path = Path(main_file)
    name = (name or "").strip() or main_path.stem
    if main_path.suffix.lower() == ".zip" or not dataset_file:
        return import_path(ProfileStore(), main_path, name)
    main_text, dataset_text = read_text(main_path), read_text(dataset_file)
    loads(dataset_text, Path(dataset_file).name)  # parse check before anything is stored
    value = loads(main_text, main_path.name).get("dataset")
    stored_as = PurePath(str(value)).name if isinstance(value, str) and value else Path(dataset_file).name
    report = ProfileStore().create(name, ProfileTexts(main_path.name, main_text, stored_as, dataset_text),
                                   message=f"imported from the uploaded {main_path.name} + {Path(dataset_file).name}")
    note = f"dataset TOML taken from the uploaded {Path(dataset_file).name}"
    if stored_as != Path(dataset_file).name:
        note += f", stored as {stored_as} (the name the main TOML's dataset key gives)"
    return SaveReport(report.profile, report.version, [*report.notes, note], report.issues)


def on_import(main_file: str | None, dataset_file: str | None, name: str) -> tuple:
    try:
        report = import_upload(main_file, dataset_file, name)
    except (ProfileError, ConfigParseError) as exc:
        text = exc.format() if isinstance(exc, ConfigParseError) else str(exc)
        hint = "" if dataset_file else " (upload the dataset TOML beside it, or a zip holding both)"
        text = pv.name_uploads(text, [main_file, dataset_file])
        return (f"⚠ Not imported: {text}{hint if 'not found' in text else ''}", *refresh_all(None))
    return (pv.report_message("imported", report), *refresh_all(report.profile.name))


@functools.cache
def _export_folder() -> Path:
    """One private temporary folder per server for the zips handed to the browser (a new export of a profile
    replaces its previous zip), not one more folder per click."""
    return Path(tempfile.mkdtemp(prefix="dp-studio-export-"))


def export_profile(name: str | None) -> tuple:
    """Zip the profile's newest version (original file names, bytes unchanged; never a secret)."""
    if not name:
        return gr.update(visible=False), "⚠ Pick a profile to export."
    try:
        out = _export_folder() / f"{slugify(name)}.zip"
        export_zip(ProfileStore(), name, out)
    except ProfileError as exc:
        return gr.update(visible=False), f"⚠ Not exported: {exc}"
    return (gr.update(value=str(out), label=f"⬇ {out.name}", visible=True),
            f"✓ Exported **{name}** as {out.name}: press the download button.")


def listing_outputs(h: ProfilesHandles) -> list:
    """The outputs of ``refresh_all``, in its order."""
    return [h.table, h.selected, h.diff_a, h.diff_b, h.history, h.version]


def wire(h: ProfilesHandles, services: Services, build: builder.BuilderHandles, tabs: gr.Tabs,
         builder_tab: str) -> None:
    listing = listing_outputs(h)
    h.refresh.click(refresh_all, inputs=h.selected, outputs=listing, api_visibility="private")
    h.selected.input(history_of, inputs=h.selected, outputs=[h.history, h.version], api_visibility="private")
    h.diff_a.input(version_picker, inputs=h.diff_a, outputs=h.version_a, api_visibility="private")
    h.diff_b.input(version_picker, inputs=h.diff_b, outputs=h.version_b, api_visibility="private")
    h.diff_run.click(on_diff, inputs=[h.diff_a, h.version_a, h.diff_b, h.version_b],
                     outputs=[h.diff_note, h.diff_table], api_name="diff_profiles")
    h.rollback.click(on_rollback, inputs=[h.selected, h.version], outputs=[h.message, *listing],
                     api_visibility="private")
    h.import_run.click(on_import, inputs=[h.import_main, h.import_dataset, h.import_name],
                       outputs=[h.message, *listing], api_visibility="private")
    h.export.click(export_profile, inputs=h.selected, outputs=[h.download, h.message], api_name="export_profile")
    opened = h.open_builder.click(builder.on_load_profile, inputs=[h.selected, build.texts, build.pair],
                                  outputs=builder.load_outputs(build), **builder.EDIT)
    opened.then(lambda pair: (gr.Tabs(selected=builder_tab), pair["profile"] or gr.skip(),
                              gr.update(choices=builder.profile_names(), value=pair["profile"])),
                inputs=build.pair, outputs=[tabs, build.save_name, build.picker], api_visibility="private")
    gr.api(list_profiles, api_name="list_profiles")
