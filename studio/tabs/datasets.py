"""Dataset browser: what the trainer will make of a dataset, image by image, before any run.

A folder (buckets for a chosen resolution) or a profile's dataset TOML (its own resolutions, aspect-ratio
buckets, repeats, captions.json, prefix...) is read by the native trainer's own dataset reader
(:mod:`trainers.dataset_report`): thumbnails with captions, each image's bucket and crop, the bucket list with
steps per epoch at the chosen global batch, tag counts, and health checks (captions, trigger word, upscaling,
heavy crops, blur, near-duplicates, dropped buckets). Clicking an image shows its crop next to the training view.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio.services import Services
from studio.tabs import dataset_bulk
from studio.user_errors import user_mistake
from trainers.dataset_report import (
    BUCKET_HEADERS,
    TABLE_HEADERS,
    DatasetReport,
    DatasetReportError,
    ImageInfo,
    analyse,
    crop_preview,
    save_captions,
)

GALLERY_LIMIT = 300  # thumbnails sent to the page; the table lists every image
RESOLUTIONS = [256, 512, 768, 1024, 1280, 1536]
TABLE_WIDTHS = ["11%", "8%", "8%", "9%", "6%", "8%", "22%", "28%"]  # the issues column gets room to wrap


@dataclass
class DatasetHandles:
    folder: gr.Textbox
    resolution: gr.Dropdown
    ar_buckets: gr.Checkbox
    trigger: gr.Textbox
    batch: gr.Number
    load: gr.Button
    summary: gr.Markdown
    gallery: gr.Gallery
    preview: gr.Image
    detail: gr.Markdown
    table: gr.Dataframe
    buckets: gr.Dataframe
    tags: gr.Dataframe
    health: gr.Markdown
    report: gr.State
    selected: gr.State
    caption: gr.Textbox
    save_caption: gr.Button
    caption_message: gr.Markdown
    bulk: dataset_bulk.BulkHandles


def render(services: Services) -> DatasetHandles:
    with gr.Row():
        folder = gr.Textbox(label="Dataset folder, or a dataset .toml", value=str(services.demo_dataset_dir),
                            scale=5, elem_id="datasets-folder",
                            info="A TOML uses its own resolutions and bucket settings; a folder uses the ones here")
        load = gr.Button("Browse", scale=1, variant="primary", elem_id="datasets-load")
    with gr.Row():
        resolution = gr.Dropdown(RESOLUTIONS, value=1024, label="Resolution (folder)", allow_custom_value=True,
                                 elem_id="datasets-resolution")
        ar_buckets = gr.Checkbox(value=True, label="Aspect-ratio buckets (folder)", elem_id="datasets-ar")
        trigger = gr.Textbox(label="Trigger word (checked in every caption)", placeholder="e.g. zxq",
                             elem_id="datasets-trigger")
        batch = gr.Number(value=1, precision=0, minimum=1, label="Global batch (micro batch × accumulation)",
                          elem_id="datasets-batch")
    summary = gr.Markdown("", elem_id="datasets-summary")
    with gr.Row():
        gallery = gr.Gallery(label="Images (click one for its crop)", columns=6, height=420, scale=3,
                             elem_id="datasets-gallery", allow_preview=False)
        with gr.Column(scale=2):
            preview = gr.Image(label="Crop: the picture (dimmed = cut away) · what the trainer sees", type="pil",
                               interactive=False, height=320, elem_id="datasets-preview")
            detail = gr.Markdown("", elem_id="datasets-detail")
            caption = gr.Textbox(label="Caption of the selected image (captions.json: one per line)", lines=3,
                                 elem_id="datasets-caption")
            save_caption = gr.Button("Save caption", size="sm", elem_id="datasets-save-caption")
            caption_message = gr.Markdown("", elem_id="datasets-caption-message")
    with gr.Tabs():
        with gr.Tab("Images"):
            table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, elem_id="datasets-table",
                                 column_widths=TABLE_WIDTHS)
        with gr.Tab("Buckets"):
            buckets = gr.Dataframe(headers=BUCKET_HEADERS, interactive=False, elem_id="datasets-buckets")
        with gr.Tab("Tags"):
            tags = gr.Dataframe(headers=["tag", "images"], interactive=False, elem_id="datasets-tags")
        with gr.Tab("Health"):
            health = gr.Markdown("", elem_id="datasets-health")
    bulk = dataset_bulk.render()
    return DatasetHandles(folder, resolution, ar_buckets, trigger, batch, load, summary, gallery, preview, detail,
                          table, buckets, tags, health, gr.State(None), gr.State(""), caption, save_caption,
                          caption_message, bulk)


def browse(folder_text: str, resolution=1024, ar_buckets: bool = True, trigger: str = "", batch=1):
    """Read and check a dataset folder or TOML: summary, thumbnails, per-image table, buckets, tags, health."""
    try:
        side = _whole_number(resolution, 1024, "resolution", "a side in pixels such as 512 or 1024")
        report = analyse((folder_text or "").strip(), resolution=side, ar_buckets=bool(ar_buckets),
                         trigger=trigger or "", global_batch=_whole_number(batch, 1, "global batch", "1 or more"))
    except (DatasetReportError, ValueError) as exc:
        message = f"⚠ {exc}"
        return message, [], [], [], [], "", None, None, "", "", ""
    items = [(report.thumbs[i.path], f"{i.path.name}: {i.captions[0] if i.captions else '(no caption)'}")
             for i in _gallery_images(report)]
    summary = report.summary_markdown()
    if len(report.thumbs) > GALLERY_LIMIT:
        summary += f"\n\nThe gallery shows the first {GALLERY_LIMIT} images; the table lists them all."
    tags = [[tag, str(count)] for tag, count in report.tags[:200]]
    return (summary, items, report.table(), report.bucket_table(), tags, report.health_markdown(), report, None,
            "", "", "")


def _gallery_images(report: DatasetReport) -> list[ImageInfo]:
    """The images the gallery shows, in its order (a click's index points into this list)."""
    return [i for i in report.images if i.path in report.thumbs][:GALLERY_LIMIT]


def _whole_number(value, default: int, what: str, hint: str) -> int:
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetReportError(f"{what} {value!r} is not a number: type {hint}") from None
    if number != int(number) or number < 1:
        raise DatasetReportError(f"{what} {value!r} must be a whole number of at least 1: type {hint}")
    return int(number)


def image_detail(report: DatasetReport | None, name: str):
    """The crop preview and the facts of one image of the report."""
    info = report.find(name) if report else None
    if info is None:
        return None, "", "", ""
    try:
        picture = crop_preview(info)
    except OSError:
        picture = None
    return picture, _facts(info), info.path.name, "\n".join(info.captions)


def _facts(info: ImageInfo) -> str:
    lines = [f"**{info.path.name}** · {info.width}×{info.height}"]
    if info.buckets:
        left, top, right, bottom = info.crop
        lines.append(f"bucket {' / '.join(f'{w}×{h}' for w, h in info.buckets)} · crop keeps "
                     f"{right - left:.0f}×{bottom - top:.0f} px from ({left:.0f}, {top:.0f}), {100 * info.kept:.0f}% "
                     f"of the picture · scale ×{info.scale:.2f} · {info.examples} example"
                     f"{'' if info.examples == 1 else 's'} per epoch")
    lines += [f"- {caption}" for caption in info.captions[:8]] or ["- (no caption)"]
    lines += [f"⚠ {issue}" for issue in info.issues]
    return "\n\n".join(lines)


def save_caption(report: DatasetReport | None, name: str, text: str):
    """Write the selected image's caption; the table, summary and health list follow."""
    info = report.find(name) if report and name else None
    if info is None:
        raise user_mistake("Click an image first, then edit its caption.")
    try:
        target = save_captions(report, info, (text or "").splitlines() if info.in_json else [(text or "").strip()])
    except (DatasetReportError, OSError) as exc:
        raise user_mistake(str(exc)) from exc
    note = "" if info.trained else " It had no caption before: press **Browse** to count its buckets and steps."
    return (f"✓ Saved `{target.name}`.{note}", _facts(info), report.table(), report.summary_markdown(),
            report.health_markdown())


def browse_event(h: DatasetHandles) -> dict:
    """Keyword arguments of an event (or ``.then``) that browses what the tab's inputs say."""
    return dict(fn=browse, inputs=[h.folder, h.resolution, h.ar_buckets, h.trigger, h.batch],
                outputs=[h.summary, h.gallery, h.table, h.buckets, h.tags, h.health, h.report, h.preview, h.detail,
                         h.selected, h.caption])


def wire(h: DatasetHandles, services: Services) -> None:
    event = browse_event(h)
    inputs, outputs = event["inputs"], event["outputs"]
    h.load.click(browse, inputs=inputs, outputs=outputs, api_name="browse_dataset")
    h.folder.submit(browse, inputs=inputs, outputs=outputs, api_visibility="private")

    def on_gallery(report, evt: gr.SelectData):
        shown = _gallery_images(report) if report else []
        return image_detail(report, shown[evt.index].path.name if 0 <= evt.index < len(shown) else "")

    def on_row(report, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        images = report.images if report else []
        return image_detail(report, images[row].path.name if 0 <= row < len(images) else "")

    picked = [h.preview, h.detail, h.selected, h.caption]
    h.gallery.select(on_gallery, inputs=h.report, outputs=picked, api_visibility="private")
    h.table.select(on_row, inputs=h.report, outputs=picked, api_visibility="private")
    h.save_caption.click(save_caption, inputs=[h.report, h.selected, h.caption],
                         outputs=[h.caption_message, h.detail, h.table, h.summary, h.health], api_visibility="private")
    dataset_bulk.wire(h.bulk, h.report)
