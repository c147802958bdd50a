"""Config builder: view and edit a profile's main + dataset TOML (the form view grows on top of this)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio.services import Services


@dataclass
class BuilderHandles:
    main_path: gr.Textbox
    load: gr.Button
    main_text: gr.Code
    dataset_path: gr.Textbox
    dataset_text: gr.Code
    save: gr.Button
    message: gr.Markdown


def render(services: Services) -> BuilderHandles:
    with gr.Row():
        main_path = gr.Textbox(label="Main TOML", value=str(services.demo_main), scale=5, elem_id="builder-path")
        load = gr.Button("Load", scale=1, elem_id="builder-load")
    with gr.Row():
        main_text = gr.Code(label="Main config", lines=24, elem_id="builder-main")
        with gr.Column():
            dataset_path = gr.Textbox(label="Dataset TOML (from the main config's `dataset` key)",
                                      interactive=False)
            dataset_text = gr.Code(label="Dataset config", lines=20, elem_id="builder-dataset")
    save = gr.Button("Save both", variant="primary", elem_id="builder-save")
    message = gr.Markdown("", elem_id="builder-message")
    return BuilderHandles(main_path, load, main_text, dataset_path, dataset_text, save, message)


def check_toml(text: str, label: str) -> str | None:
    """None when ``text`` parses as TOML, else an error naming the line and column."""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return f"{label}: {exc} — fix the TOML syntax at that line."
    return None


def dataset_path_for(main_path: Path, main_text: str) -> Path | None:
    """The dataset TOML named by the main config (relative to the main file's folder)."""
    value = tomllib.loads(main_text).get("dataset")
    if not value:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else main_path.parent / p


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_pair(main_path: str) -> tuple[str, str, str, str]:
    path = Path(main_path).expanduser()
    if not path.is_file():
        return "", "", "", f"⚠ {path} does not exist: type the path of a main TOML."
    text = path.read_text(encoding="utf-8")
    error = check_toml(text, path.name)
    ds = None if error else dataset_path_for(path, text)
    ds_text = ds.read_text(encoding="utf-8") if ds and ds.is_file() else ""
    note = error or ("" if ds_text else "⚠ the `dataset` key names no existing file.")
    return text, str(ds or ""), ds_text, note or f"Loaded {path.name}."


def save_pair(main_path: str, main_text: str, dataset_path: str, dataset_text: str) -> str:
    errors = [e for e in (check_toml(main_text, "main config"), check_toml(dataset_text, "dataset config")) if e]
    if errors:
        return "⚠ Not saved. " + " ".join(errors)
    write_atomic(Path(main_path).expanduser(), main_text)
    if dataset_path:
        write_atomic(Path(dataset_path), dataset_text)
    return "Saved both files."


def wire(h: BuilderHandles, services: Services) -> None:
    outputs = [h.main_text, h.dataset_path, h.dataset_text, h.message]
    h.load.click(load_pair, inputs=h.main_path, outputs=outputs)
    h.main_path.submit(load_pair, inputs=h.main_path, outputs=outputs)
    h.save.click(save_pair, inputs=[h.main_path, h.main_text, h.dataset_path, h.dataset_text], outputs=h.message)
