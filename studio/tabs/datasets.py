"""Dataset browser: what the trainer will make of a dataset, image by image, before any run.

A folder (buckets for a chosen resolution) or a profile's dataset TOML (its own resolutions, aspect-ratio
buckets, repeats, captions.json, prefix...) is read by the native trainer's own dataset reader
(:mod:`trainers.datasets.report`): thumbnails with captions, each image's bucket and crop, the bucket list with
steps per epoch at the chosen global batch, tag counts, and health checks (captions, trigger word, upscaling,
heavy crops, blur, near-duplicates, dropped buckets). Clicking an image shows its crop next to the training view.

Large folders: the cheap scan (headers, captions, buckets, and whatever the check cache knows) shows first; the
pictures not measured yet are measured in worker processes while the summary shows the progress, and the report
fills in when they are done. The grid and the table show one page (``PAGE_SIZE`` images) of the chosen filter, so
a page of a 10,000-image folder costs what a page of a small one does; only that page's thumbnails (files in the
check cache) are sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio import served
from studio.services import Services
from studio.tabs import dataset_bulk
from studio.user_errors import user_mistake
from trainers.datasets.check_cache import cache_root
from trainers.datasets.report import (
    BUCKET_HEADERS,
    SEVERITY,
    TABLE_HEADERS,
    CheckState,
    DatasetReport,
    DatasetReportError,
    ImageInfo,
    check_steps,
    crop_preview,
    kind,
    save_captions,
)

PAGE_SIZE = 60  # images per page of the grid and the table
ALL, PROBLEMS = "all images", "with problems"
FILTERS = [ALL, PROBLEMS, *SEVERITY]
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
    show: gr.Dropdown
    page: gr.Number
    prev_page: gr.Button
    next_page: gr.Button
    page_note: gr.Markdown
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
    with gr.Row(equal_height=True):
        show = gr.Dropdown(FILTERS, value=ALL, label="Show", scale=2, elem_id="datasets-filter")
        prev_page = gr.Button("◀ Previous", scale=1, size="sm", elem_id="datasets-prev")
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", scale=1, elem_id="datasets-page")
        next_page = gr.Button("Next ▶", scale=1, size="sm", elem_id="datasets-next")
        page_note = gr.Markdown("", elem_id="datasets-page-note")
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
                          table, buckets, tags, health, gr.State(None), gr.State(""), show, page, prev_page,
                          next_page, page_note, caption, save_caption, caption_message, bulk)


def browse(folder_text: str, resolution=1024, ar_buckets: bool = True, trigger: str = "", batch=1,
           show: str = ALL):
    """Read and check a dataset folder or TOML: the cheap scan's report at once, progress while the pictures
    are measured, then the complete report (summary, page 1 of the grid and table, buckets, tags, health)."""
    try:
        side = _whole_number(resolution, 1024, "resolution", "a side in pixels such as 512 or 1024")
        states = check_steps((folder_text or "").strip(), resolution=side, ar_buckets=bool(ar_buckets),
                             trigger=trigger or "", global_batch=_whole_number(batch, 1, "global batch", "1 or more"))
        for number, state in enumerate(states):
            yield _outputs(state, show) if number == 0 else _later_outputs(state, show, grid=number == 1)
    except (DatasetReportError, ValueError) as exc:
        yield f"⚠ {exc}", [], [], [], [], "", None, None, "", "", "", 1, ""


def _outputs(state: CheckState, show: str, fresh: bool = True) -> tuple:
    """Every output for ``state``, page 1 of the grid; ``fresh`` (a new check) also clears the picture shown."""
    report = state.report
    summary = report.summary_markdown() if state.final else _measuring(report, state)
    items, rows, number, note = page_view(report, show, 1)
    tags = [[tag, str(count)] for tag, count in report.tags[:200]]
    health = report.health_markdown() if state.final else "Measuring the pictures: the health list follows."
    picked = (None, "", "", "") if fresh else (gr.skip(),) * 4
    return (summary, items, rows, report.bucket_table(), tags, health, report, *picked, number, note)


def _later_outputs(state: CheckState, show: str, grid: bool) -> tuple:
    """A later state of the same check: the picture being looked at, its caption being edited and the page
    being read stay as they are. The grid's first page is shown once its thumbnails exist (``grid``) and
    when the check is complete; otherwise only the progress and the report behind the paging move."""
    report, keep = state.report, gr.skip()
    if state.final:
        return _outputs(state, show, fresh=False)
    if grid:
        items, rows, number, note = page_view(report, show, 1)
        return (_measuring(report, state), items, rows, keep, keep, keep, report, keep, keep, keep, keep, number,
                note)
    return (_measuring(report, state), keep, keep, keep, keep, keep, report, keep, keep, keep, keep, keep, keep)


def _measuring(report: DatasetReport, state: CheckState) -> str:
    share = state.done / max(state.total, 1)
    bar = "▰" * round(20 * share) + "▱" * (20 - round(20 * share))
    return (f"{report.summary_markdown()}\n\n⏳ {bar} **measuring {state.done:,} of {state.total:,} pictures** "
            "(the trainer's decode check, sharpness, near-duplicates; cached for the next open)")


def shown_images(report: DatasetReport | None, show: str) -> list[ImageInfo]:
    """The images the filter keeps, in the table's order."""
    if report is None:
        return []
    if show in (ALL, None, ""):
        return report.images
    if show == PROBLEMS:
        return [i for i in report.images if i.issues]
    return [i for i in report.images if any(kind(issue) == show for issue in i.issues)]


def page_images(report: DatasetReport | None, show: str, page) -> tuple[list[ImageInfo], int, int]:
    """The images of one page of the filter, the page number (clamped) and the number of pages."""
    images = shown_images(report, show)
    pages = max(1, -(-len(images) // PAGE_SIZE))
    try:
        number = min(max(int(page or 1), 1), pages)
    except (TypeError, ValueError):
        number = 1
    return images[(number - 1) * PAGE_SIZE:number * PAGE_SIZE], number, pages


def page_view(report: DatasetReport | None, show: str, page) -> tuple[list, list, int, str]:
    """One page: gallery items (thumbnails from the check cache), table rows, the page number and its note."""
    images, number, pages = page_images(report, show, page)
    if report is None:
        return [], [], 1, ""
    items = [(str(report.thumbs[i.path]), f"{i.path.name}: {i.captions[0] if i.captions else '(no caption)'}")
             for i in images if i.path in report.thumbs]
    total = len(shown_images(report, show))
    note = (f"page {number} of {pages} · {total:,} image{'' if total == 1 else 's'} "
            f"{'' if show in (ALL, None, '') else f'({show}) '}· {PAGE_SIZE} per page")
    return served.publish_items(items, [cache_root()]), report.table_rows(images), number, note


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
    return (f"✓ Saved `{target.name}`.{note}", _facts(info), report.summary_markdown(), report.health_markdown())


def browse_event(h: DatasetHandles) -> dict:
    """Keyword arguments of an event (or ``.then``) that browses what the tab's inputs say."""
    return dict(fn=browse, inputs=[h.folder, h.resolution, h.ar_buckets, h.trigger, h.batch, h.show],
                outputs=[h.summary, h.gallery, h.table, h.buckets, h.tags, h.health, h.report, h.preview, h.detail,
                         h.selected, h.caption, h.page, h.page_note])


def wire(h: DatasetHandles, services: Services) -> None:
    event = browse_event(h)
    inputs, outputs = event["inputs"], event["outputs"]
    # A newer browse replaces a running one (its worker processes stop with it).
    running = h.load.click(browse, inputs=inputs, outputs=outputs, api_name="browse_dataset",
                           trigger_mode="always_last")
    h.folder.submit(browse, inputs=inputs, outputs=outputs, api_visibility="private", cancels=[running])
    paging = {"outputs": [h.gallery, h.table, h.page, h.page_note], "api_visibility": "private",
              "show_progress": "hidden"}
    h.page.submit(page_view, inputs=[h.report, h.show, h.page], **paging)
    h.show.input(lambda report, show: page_view(report, show, 1), inputs=[h.report, h.show], **paging)
    h.prev_page.click(lambda report, show, page: page_view(report, show, (page or 1) - 1),
                      inputs=[h.report, h.show, h.page], **paging)
    h.next_page.click(lambda report, show, page: page_view(report, show, (page or 1) + 1),
                      inputs=[h.report, h.show, h.page], **paging)

    def on_gallery(report, show, page, evt: gr.SelectData):
        shown = [i for i in page_images(report, show, page)[0] if report and i.path in report.thumbs]
        return image_detail(report, shown[evt.index].path.name if 0 <= evt.index < len(shown) else "")

    def on_row(report, show, page, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        images = page_images(report, show, page)[0]
        return image_detail(report, images[row].path.name if 0 <= row < len(images) else "")

    picked = [h.preview, h.detail, h.selected, h.caption]
    where = [h.report, h.show, h.page]
    h.gallery.select(on_gallery, inputs=where, outputs=picked, api_visibility="private")
    h.table.select(on_row, inputs=where, outputs=picked, api_visibility="private")
    h.save_caption.click(save_caption, inputs=[h.report, h.selected, h.caption],
                         outputs=[h.caption_message, h.detail, h.summary, h.health], api_visibility="private").then(
        page_view, inputs=where, outputs=[h.gallery, h.table, h.page, h.page_note], api_visibility="private")
    dataset_bulk.wire(h.bulk, h.report)
