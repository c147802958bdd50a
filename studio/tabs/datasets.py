"""Dataset browser: thumbnails with their captions (bucket preview and health checks grow on this)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from studio.services import Services
from trainers.dataset_scan import scan_folder

THUMB = 256


@dataclass
class DatasetHandles:
    folder: gr.Textbox
    load: gr.Button
    summary: gr.Markdown
    gallery: gr.Gallery
    table: gr.Dataframe


def render(services: Services) -> DatasetHandles:
    with gr.Row():
        folder = gr.Textbox(label="Dataset folder", value=str(services.demo_dataset_dir), scale=5,
                            elem_id="datasets-folder")
        load = gr.Button("Browse", scale=1, elem_id="datasets-load")
    summary = gr.Markdown("", elem_id="datasets-summary")
    gallery = gr.Gallery(label="Images", columns=6, height=420, elem_id="datasets-gallery")
    table = gr.Dataframe(headers=["file", "size", "caption"], interactive=False, elem_id="datasets-table")
    return DatasetHandles(folder, load, summary, gallery, table)


def browse(folder_text: str):
    folder = Path(folder_text).expanduser()
    if not folder.is_dir():
        return f"⚠ {folder} is not a folder: type the folder that holds your images.", [], []
    rows = scan_folder(folder)
    items, table = [], []
    for row in rows:
        with Image.open(row.path) as im:
            size = f"{im.width}×{im.height}"
            thumb = im.convert("RGB")
            thumb.thumbnail((THUMB, THUMB))
        caption = row.caption if row.caption is not None else "(no caption: skipped by default)"
        items.append((thumb, f"{row.path.name}: {caption}"))
        table.append([row.path.name, size, caption])
    missing = sum(1 for r in rows if r.caption is None)
    summary = f"**{len(rows)} images** in `{folder}`" + (f" · ⚠ {missing} without a caption" if missing else "")
    return summary, items, table


def wire(h: DatasetHandles, services: Services) -> None:
    outputs = [h.summary, h.gallery, h.table]
    h.load.click(browse, inputs=h.folder, outputs=outputs, api_name="browse_dataset")
    h.folder.submit(browse, inputs=h.folder, outputs=outputs)
