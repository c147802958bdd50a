"""Config builder: a form generated from the schema beside the TOML editors, kept in sync both ways.

The form is a fixed pool of widgets (``builder_form.form_pool``), one per key any model type reads; picking a
model type shows the keys that type reads. A form edit changes only that key in the tomlkit document (comments
stay); an editor edit refills the form. Issues show at their field and as ``FILE:LINE: key: message — fix``
lines under the editor. Exact file texts live in a per-session ``gr.State`` (Gradio's Code trims both ends).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio import builder_form as bf
from studio import builder_view as bv
from studio.profiles_view import report_message
from studio.services import Services, is_remote
from studio.user_errors import user_mistake
from trainers.config import validate_texts
from trainers.config.issues import ConfigIssue, ConfigParseError
from trainers.config.paths_check import config_base
from trainers.config.rules_native import runs_natively
from trainers.config.toml_io import dumps, loads, read_text, set_value
from trainers.paths import user_path
from trainers.profiles import ProfileError, ProfileStore, ProfileTexts
from trainers.runs import resolve_config_path
from trainers.safe_paths import PathRefused, within_any

CSS = """
.dp-invalid [data-testid="block-info"], .dp-invalid .info-text {color: #dc2626 !important}
.dp-warning [data-testid="block-info"], .dp-warning .info-text {color: #b45309 !important}
#builder-editors {position: sticky; top: 8px; align-self: flex-start}
"""
REFRESH_HEAD = 9  # outputs of ``refresh`` before the fields (see ``load_outputs``)
EDIT = {"api_visibility": "private", "concurrency_id": "builder-edit", "concurrency_limit": 1}


@dataclass
class BuilderHandles:
    model_type: gr.Dropdown
    picker: gr.Dropdown
    load: gr.Button
    save_name: gr.Textbox
    save: gr.Button
    path: gr.Textbox
    open_file: gr.Button
    message: gr.Markdown
    fields: dict[str, Any]  # field id -> widget, in form_pool order
    dir_index: gr.Dropdown
    main_code: gr.Code
    dataset_code: gr.Code
    skip_paths: gr.Checkbox
    validate: gr.Button
    issues: gr.Markdown
    texts: gr.State  # {"main": exact text, "dataset": exact text}
    pair: gr.State  # {"main_name", "dataset_name", "bases": [folders], "profile": name or None}
    shown: gr.State  # {field id: error text currently shown at the field}


def field_elem_id(field: bf.FormField) -> str:
    return f"field-{field.file}-{field.key.replace('.', '-')}"


def profile_names() -> list[str]:
    return [info.name for info in ProfileStore().list()]


def read_pair(main_path: Path) -> tuple[dict, dict]:
    """Texts and pair state of a main TOML on disk and the dataset TOML its ``dataset`` key names."""
    main_text = read_text(main_path)
    value = loads(main_text, str(main_path)).get("dataset")
    base = config_base(main_path, {"dataset": value})  # the rule validate, train and Start use
    dataset_path = resolve_config_path(base, str(value)) if isinstance(value, str) and value else None
    dataset_text = read_text(dataset_path) if dataset_path and dataset_path.is_file() else ""
    pair = {"main_name": main_path.name, "dataset_name": dataset_path.name if dataset_path else "dataset.toml",
            "bases": [str(base)], "profile": None}
    return {"main": main_text, "dataset": dataset_text}, pair


def _dataset_value(main_text: str) -> object:
    """The main TOML's ``dataset`` value (None when the text does not parse: the checks report that)."""
    try:
        return loads(main_text).get("dataset")
    except ConfigParseError:
        return None


def profile_pair(name: str) -> tuple[dict, dict]:
    """Texts and pair state of a saved profile's newest version."""
    store = ProfileStore()
    info, texts = store.get(name), store.texts(name)
    pair = {"main_name": texts.main_name, "dataset_name": texts.dataset_name,
            "bases": [str(config_base(info.main_path, {"dataset": _dataset_value(texts.main_text)}))],
            "profile": info.name}
    return {"main": texts.main_text, "dataset": texts.dataset_text}, pair


def check(texts: dict, pair: dict, *, skip_paths: bool = True) -> list[ConfigIssue]:
    return validate_texts(texts["main"], texts["dataset"], main_file=pair["main_name"],
                          dataset_file=pair["dataset_name"], base_dir=pair["bases"] or None,
                          skip_path_checks=skip_paths)


def _pair(pair: dict) -> bv.Pair:
    return bv.Pair(pair["main_name"], pair["dataset_name"])


def _docs(texts: dict, pair: dict) -> tuple[Any, Any]:
    return loads(texts["main"], pair["main_name"]), loads(texts["dataset"], pair["dataset_name"])


EMPTY_PAIR = {"main_name": "main.toml", "dataset_name": "dataset.toml", "bases": [], "profile": None}


def _initial(services: Services) -> tuple[dict, dict, Any, Any]:
    """The demo pair (or an empty chroma config when it cannot be read), parsed."""
    try:
        texts, pair = read_pair(services.demo_main)
        return texts, pair, *_docs(texts, pair)
    except ConfigParseError:
        texts = {"main": "[model]\ntype = 'chroma'\n", "dataset": ""}
        return texts, dict(EMPTY_PAIR), *_docs(texts, EMPTY_PAIR)


def render(services: Services) -> BuilderHandles:
    texts, pair, main_doc, dataset_doc = _initial(services)
    model_type = bf.model_type_of(main_doc)
    issues = check(texts, pair)
    errors = bv.field_errors(issues, _pair(pair), 0, model_type)
    with gr.Row():
        type_dd = gr.Dropdown(bv.type_choices(), value=model_type, label="Model type", allow_custom_value=True,
                              scale=2, elem_id="builder-type")
        picker = gr.Dropdown(profile_names(), label="Profile", value=None, scale=2, elem_id="builder-picker")
        load = gr.Button("Load profile", scale=1, elem_id="builder-load")
        save_name = gr.Textbox(label="Save as profile (an existing name saves a new version)", scale=2,
                               elem_id="builder-save-name")
        save = gr.Button("Save as profile", variant="primary", scale=1, elem_id="builder-save")
    with gr.Accordion("Open a TOML file from disk", open=False):
        with gr.Row():
            path = gr.Textbox(label="Main TOML", value=str(services.demo_main), scale=5, elem_id="builder-path")
            open_file = gr.Button("Open", scale=1, elem_id="builder-open")
    message = gr.Markdown(f"Editing {pair['main_name']} + {pair['dataset_name']}.", elem_id="builder-message")
    with gr.Row():
        with gr.Column(scale=3, elem_id="builder-form"):
            values = bf.form_values(main_doc, dataset_doc, model_type, 0)
            fields, dir_dd = _render_form(model_type, values, errors, dataset_doc)
        with gr.Column(scale=2, elem_id="builder-editors"):
            main_code, dataset_code = _render_editors(texts, pair)
            with gr.Row():
                skip_paths = gr.Checkbox(label="Skip path checks", value=False, elem_id="builder-skip-paths")
                validate = gr.Button("✔ Validate", elem_id="builder-validate")
            issues_md = gr.Markdown(bv.issues_markdown(issues, paths_checked=False), elem_id="builder-issues")
    return BuilderHandles(type_dd, picker, load, save_name, save, path, open_file, message, fields, dir_dd,
                          main_code, dataset_code, skip_paths, validate, issues_md, gr.State(texts),
                          gr.State(pair), gr.State(errors))


def _render_editors(texts: dict, pair: dict) -> tuple[gr.Code, gr.Code]:
    with gr.Tabs():
        with gr.Tab("Main TOML", id="main"):
            main_code = gr.Code(texts["main"], language=None, label=pair["main_name"], lines=28, max_lines=28,
                                elem_id="builder-main")
        with gr.Tab("Dataset TOML", id="dataset"):
            dataset_code = gr.Code(texts["dataset"], language=None, label=pair["dataset_name"], lines=28,
                                   max_lines=28, elem_id="builder-dataset")
    return main_code, dataset_code


def _render_form(model_type: str, values: dict, errors: dict, dataset_doc: Any) -> tuple[dict, Any]:
    fields: dict[str, Any] = {}
    dir_dd = None
    for file, section, title in bf.SECTIONS:
        members = [f for f in bf.form_pool() if (f.file, f.section) == (file, section)]
        with gr.Accordion(title, open=section in ("", "model") and file == "main"):
            if section == "directory":
                dir_dd = gr.Dropdown(bf.directory_choices(dataset_doc), value=0, label="[[directory]] entry",
                                     info="Which dataset folder the fields below edit.", elem_id="builder-dir")
            with gr.Row():
                for field in members:
                    props = bv.field_props(field, model_type, values[field.id], errors.get(field.id))
                    fields[field.id] = _widget(field, props)
    return fields, dir_dd


def _widget(field: bf.FormField, props: dict) -> Any:
    common = {"elem_id": field_elem_id(field), "min_width": 230, **props}
    if field.widget == "checkbox":
        return gr.Checkbox(**common)
    if field.widget == "tristate":
        return gr.Dropdown(choices=bv.TRISTATE_CHOICES, allow_custom_value=True, **common)
    if field.widget == "dropdown":
        common.setdefault("choices", [(bv.NOT_SET, "")])
        return gr.Dropdown(allow_custom_value=True, **common)
    return gr.Textbox(lines=1, max_lines=3, **common)


# handlers ------------------------------------------------------------------------------------------------
def refresh(texts: dict, pair: dict, dir_index: int | None, *, editors: bool, message: Any = None,
            skip_paths: bool = True, values: bool = True, shown: tuple[str, dict] | None = None) -> tuple:
    """Every output of a full refresh: states, editors (when asked), type, directory picker, issues, fields.

    ``values`` False leaves what the fields hold alone (type change, validate): nothing the user is typing is
    overwritten, and fields hidden before already hold the document's values. ``shown`` (the model type and
    field errors the page shows now) lets such a refresh send only the fields whose look changes.
    """
    dir_index = int(dir_index or 0)
    issues = check(texts, pair, skip_paths=skip_paths)
    head = [texts, pair,
            gr.update(value=texts["main"], label=pair["main_name"]) if editors else gr.skip(),
            gr.update(value=texts["dataset"], label=pair["dataset_name"]) if editors else gr.skip()]
    issues_md = bv.issues_markdown(issues, paths_checked=not skip_paths)
    message = gr.skip() if message is None else message
    try:
        main_doc, dataset_doc = _docs(texts, pair)
    except ConfigParseError:
        return (*head, gr.skip(), gr.skip(), issues_md, message, gr.skip(), *[gr.skip()] * len(bf.form_pool()))
    model_type = bf.model_type_of(main_doc)
    dir_index = min(dir_index, max(0, bf.directory_count(dataset_doc) - 1))
    current = bf.form_values(main_doc, dataset_doc, model_type, dir_index)
    errors = bv.field_errors(issues, _pair(pair), dir_index, model_type)
    props = [bv.field_props(f, model_type, current[f.id], errors.get(f.id)) for f in bf.form_pool()]
    if values:
        updates = [gr.update(**p) for p in props]
    else:
        looks = [{k: v for k, v in p.items() if k != "value"} for p in props]
        before = _looks(*shown) if shown else [None] * len(looks)
        updates = [gr.skip() if look == old else gr.update(**look) for look, old in zip(looks, before, strict=True)]
    dir_update = gr.update(choices=bf.directory_choices(dataset_doc), value=dir_index)
    return (*head, model_type, dir_update, issues_md, message, errors, *updates)


def _looks(model_type: str, errors: dict) -> list[dict]:
    """What each field shows, apart from its value, for ``model_type`` with ``errors``."""
    looks = (bv.field_props(f, model_type, None, errors.get(f.id)) for f in bf.form_pool())
    return [{k: v for k, v in p.items() if k != "value"} for p in looks]


def on_form_edit(texts: dict, pair: dict, shown: dict, dir_index: int | None, *values: Any) -> tuple:
    """A keystroke or pick in the form: an emptied text field keeps its key until the user leaves it."""
    return on_form(texts, pair, shown, dir_index, *values, remove_empty=False)


def on_form(texts: dict, pair: dict, shown: dict, dir_index: int | None, *values: Any,
            remove_empty: bool = True) -> tuple:
    """A form edit: write the changed keys, re-check, and update only the fields whose error changed."""
    skips = [gr.skip()] * len(bf.form_pool())
    try:
        main_doc, dataset_doc = _docs(texts, pair)
    except ConfigParseError as exc:
        note = f"⚠ The form is paused: fix the TOML syntax first ({exc.format()})."
        return texts, gr.skip(), gr.skip(), note, shown, *skips
    ids = [f.id for f in bf.form_pool()]
    dir_index = int(dir_index or 0)
    input_errors = bf.apply_form(main_doc, dataset_doc, dir_index, dict(zip(ids, values, strict=True)),
                                 remove_empty=remove_empty)
    new = {"main": dumps(main_doc), "dataset": dumps(dataset_doc)}
    if new == texts and not input_errors and not bv.shows_errors(shown):
        # A refill from the editor echoes back as change events: nothing to write, nothing to show.
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), *skips
    issues = check(new, pair)
    model_type = bf.model_type_of(main_doc)
    errors = {**bv.field_errors(issues, _pair(pair), dir_index, model_type), **input_errors}
    changed = bv.error_changes(shown, errors)
    specs = bf.specs_for(model_type)
    updates = [gr.update(**bv.error_props(f, specs.get(f.id), errors.get(f.id))) if f.id in changed
               else gr.skip() for f in bf.form_pool()]
    main_out = new["main"] if new["main"] != texts["main"] else gr.skip()
    dataset_out = new["dataset"] if new["dataset"] != texts["dataset"] else gr.skip()
    return (new, main_out, dataset_out, bv.issues_markdown(issues, paths_checked=False), errors, *updates)


def on_editor(main_text: str, dataset_text: str, texts: dict, pair: dict, dir_index: int | None) -> tuple:
    """An editor edit: keep the original end whitespace, then refill the form from the text."""
    new = {"main": bv.keep_whitespace(texts["main"], main_text or ""),
           "dataset": bv.keep_whitespace(texts["dataset"], dataset_text or "")}
    return refresh(new, pair, dir_index, editors=False)


def on_type(model_type: str, texts: dict, pair: dict, dir_index: int | None, shown: dict | None = None) -> tuple:
    """Picking a model type writes ``[model].type`` and shows the keys that type reads."""
    try:
        main_doc = loads(texts["main"], pair["main_name"])
    except ConfigParseError as exc:
        return refresh(texts, pair, dir_index, editors=False, message=f"⚠ Fix the TOML first: {exc.format()}")
    if bf.model_type_of(main_doc) == model_type:  # Gradio's dropdown reports one pick twice
        return tuple(gr.skip() for _ in range(REFRESH_HEAD + len(bf.form_pool())))
    before = (bf.model_type_of(main_doc), shown) if shown is not None else None
    set_value(main_doc, "model.type", model_type)
    message = f"Model type set to {model_type}: the form shows the keys it reads."
    # The backend follows the type (auto: native where the native trainer supports it); a backend the user
    # wrote by hand stays, and the message says so.
    chosen = (main_doc.get("studio") or {}).get("backend") if isinstance(main_doc.get("studio"), dict) else None
    trainer = "the native trainer" if runs_natively(main_doc) else "your diffusion-pipe checkout"
    message += f" It trains with {trainer}" + (f" ([studio] backend = '{chosen}', set by hand)." if chosen
                                               else " (backend auto).")
    return refresh({**texts, "main": dumps(main_doc)}, pair, dir_index, editors=True, values=False, message=message,
                   shown=before)


def on_validate(texts: dict, pair: dict, dir_index: int | None, skip_paths: bool, shown: dict | None = None,
                ) -> tuple:
    """Re-check with or without path checks; the message carries the time, so a second click visibly answers."""
    try:
        before = (bf.model_type_of(loads(texts["main"], pair["main_name"])), shown) if shown is not None else None
    except ConfigParseError:
        before = None
    message = f"Checked {'without' if skip_paths else 'with'} path checks at {time.strftime('%H:%M:%S')}."
    return refresh(texts, pair, dir_index, editors=False, skip_paths=bool(skip_paths), values=False,
                   message=message, shown=before)


def on_load_profile(name: str | None, texts: dict, pair: dict) -> tuple:
    if not name:
        return refresh(texts, pair, 0, editors=False, message="⚠ Pick a profile to load first.")
    try:
        texts, pair = profile_pair(name)
    except ProfileError as exc:
        return refresh(texts, pair, 0, editors=False, message=f"⚠ {exc}")
    return refresh(texts, pair, 0, editors=True, message=f"Loaded profile **{pair['profile']}**.")


def on_open_file(path: str, texts: dict, pair: dict) -> tuple:
    main_path = user_path(path or "")
    if not main_path.is_file():
        return refresh(texts, pair, 0, editors=False, message=f"⚠ {main_path} does not exist: type the path "
                       "of a main TOML.")
    try:
        texts, pair = read_pair(main_path)
    except ConfigParseError as exc:
        return refresh(texts, pair, 0, editors=False, message=f"⚠ {exc.format()}")
    note = "" if texts["dataset"] else " ⚠ its `dataset` key names no existing file."
    return refresh(texts, pair, 0, editors=True, message=f"Opened {main_path}.{note}")


def save_profile(name: str, texts: dict, pair: dict) -> tuple[dict, dict, str]:
    """Create the profile, or save a new version when it exists; returns the stored texts, pair and a report."""
    store, name = ProfileStore(), (name or "").strip()
    if not name:
        raise ProfileError("type a profile name in the box first")
    exists = any(info.name.lower() == name.lower() or info.slug == name for info in store.list())
    if exists:
        report = store.save(name, texts["main"], texts["dataset"], message="saved from the config builder")
    else:
        pair_texts = ProfileTexts(pair["main_name"], texts["main"], pair["dataset_name"], texts["dataset"])
        report = store.create(name, pair_texts, message="created in the config builder")
    new_texts, new_pair = profile_pair(report.profile.name)
    return new_texts, new_pair, report_message("saved" if exists else "created", report)


def on_save(name: str, texts: dict, pair: dict, dir_index: int | None) -> tuple:
    try:
        texts, pair, note = save_profile(name, texts, pair)
    except (ProfileError, ConfigParseError) as exc:
        text = exc.format() if isinstance(exc, ConfigParseError) else str(exc)
        return (gr.skip(), *refresh(texts, pair, dir_index, editors=False, message=f"⚠ Not saved: {text}"))
    picker = gr.update(choices=profile_names(), value=pair["profile"])
    return (picker, *refresh(texts, pair, dir_index, editors=True, message=note))


def validate_config(main_toml: str, dataset_toml: str = "", skip_path_checks: bool = True,
                    base_dir: str = "", *, path_roots: list[Path] | None = None) -> list[dict]:
    """Validate a main + dataset TOML given as text; one dict per issue (file, line, key, message, fix, ...).
    With ``path_roots`` (a remote caller), ``base_dir`` must lie inside them and only paths there are looked up."""
    if path_roots is not None and base_dir and not within_any(Path(base_dir), path_roots):
        raise PathRefused(f"base_dir {base_dir!r} refused: it is outside the studio's folders")
    issues = validate_texts(main_toml or "", dataset_toml or None, skip_path_checks=bool(skip_path_checks),
                            base_dir=base_dir or None, path_roots=path_roots)
    return [{"file": i.file, "line": i.line, "key": i.key, "message": i.message, "fix": i.fix,
             "severity": i.severity, "text": bv.format_issue(i)} for i in issues]


def validate_endpoint(services: Services):
    """The ``validate_config`` endpoint: callers on other machines get paths looked up in the studio's
    folders only (``Services.path_roots``)."""
    def validate_config_endpoint(main_toml: str, dataset_toml: str = "", skip_path_checks: bool = True,
                                 base_dir: str = "", request: gr.Request = None) -> list[dict]:
        """Validate a main + dataset TOML given as text; one dict per issue (file, line, key, message, fix,
        severity, text)."""
        roots = services.path_roots() if is_remote(request) else None
        try:
            return validate_config(main_toml, dataset_toml, skip_path_checks, base_dir, path_roots=roots)
        except PathRefused as exc:
            raise user_mistake(str(exc)) from None

    return validate_config_endpoint


def load_outputs(h: BuilderHandles) -> list:
    """The outputs of a full refresh, in ``refresh``'s order (the profiles tab loads into the builder too)."""
    return [h.texts, h.pair, h.main_code, h.dataset_code, h.model_type, h.dir_index, h.issues, h.message,
            h.shown, *h.fields.values()]


def wire(h: BuilderHandles, services: Services) -> None:
    widgets = list(h.fields.values())
    full = load_outputs(h)
    # A refresh has ~180 outputs: Gradio's pending animation on each of them costs the browser more than the
    # handler costs the server, so a click's progress shows on the issues list alone.
    refresh_io = {"outputs": full, "show_progress_on": [h.issues], **EDIT}
    # Gradio's Textbox dispatches ``input`` from its keypress handler only, so Backspace and Delete never reach
    # the server: text boxes report ``change`` instead (a refill from the editor echoes back as a no-op, see
    # ``on_form``), and leaving a field (blur, Enter) commits it, an empty one removing its key.
    texts_ = [w for w in widgets if isinstance(w, gr.Textbox)]
    form_io = {"inputs": [h.texts, h.pair, h.shown, h.dir_index, *widgets],
               "outputs": [h.texts, h.main_code, h.dataset_code, h.issues, h.shown, *widgets],
               "trigger_mode": "always_last", "show_progress": "hidden", **EDIT}
    gr.on([w.change if w in texts_ else w.input for w in widgets], on_form_edit, **form_io)
    gr.on([w.blur for w in texts_] + [w.submit for w in texts_], on_form, **form_io)
    gr.on([h.main_code.input, h.dataset_code.input], on_editor,
          inputs=[h.main_code, h.dataset_code, h.texts, h.pair, h.dir_index], outputs=full,
          trigger_mode="always_last", show_progress="hidden", **EDIT)
    h.model_type.input(on_type, inputs=[h.model_type, h.texts, h.pair, h.dir_index, h.shown], **refresh_io)
    h.dir_index.input(lambda i, t, p: refresh(t, p, i, editors=False), inputs=[h.dir_index, h.texts, h.pair],
                      **refresh_io)
    h.validate.click(on_validate, inputs=[h.texts, h.pair, h.dir_index, h.skip_paths, h.shown], **refresh_io)
    h.load.click(on_load_profile, inputs=[h.picker, h.texts, h.pair], **refresh_io).then(
        lambda p: p["profile"] or gr.skip(), inputs=h.pair, outputs=h.save_name, api_visibility="private")
    h.open_file.click(on_open_file, inputs=[h.path, h.texts, h.pair], **refresh_io)
    h.save.click(on_save, inputs=[h.save_name, h.texts, h.pair, h.dir_index], outputs=[h.picker, *full], **EDIT)
    gr.api(validate_endpoint(services), api_name="validate_config")


def refresh_picker() -> Any:
    """Fresh profile choices for the builder's picker (after the profiles tab changed the store)."""
    return gr.update(choices=profile_names())
