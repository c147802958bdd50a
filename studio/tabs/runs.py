"""Runs library: every run under the known output folders; compare, inspect samples, pick the best epoch."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio import runs_view, view
from studio.services import Services
from trainers.events import load_all
from trainers.run_library import LAYOUTS, best_of, delete_run, export_lora, mark_best, saved_folders
from trainers.runs import RunError, RunInfo

TABLE_HEADERS = ["run", "name", "backend", "status", "steps", "last loss", "saves", "best", "created"]


@dataclass
class RunsHandles:
    refresh: gr.Button
    table: gr.Dataframe
    compare: gr.CheckboxGroup
    smoothing: gr.Slider
    overlay: gr.Plot
    diff_a: gr.Dropdown
    diff_b: gr.Dropdown
    diff: gr.Dataframe
    grid_run: gr.Dropdown
    grid_prompt: gr.Dropdown
    grid: gr.Image
    saved: gr.Dropdown
    best: gr.Button
    layout: gr.Radio
    export: gr.Button
    download: gr.DownloadButton
    confirm: gr.Textbox
    delete: gr.Button
    message: gr.Markdown
    queue_table: gr.Dataframe
    queue_pick: gr.Dropdown
    queue_up: gr.Button
    queue_front: gr.Button
    queue_cancel: gr.Button


def render(services: Services) -> RunsHandles:
    refresh = gr.Button("↻ Refresh", size="sm", elem_id="runs-refresh")
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="runs-table")
    message = gr.Markdown("", elem_id="runs-message")
    with gr.Accordion("Queue (runs waiting for the device)", open=False):
        queue_table = gr.Dataframe(headers=["position", "run", "name"], interactive=False, elem_id="runs-queue")
        with gr.Row():
            queue_pick = gr.Dropdown(label="Queued run", choices=[], elem_id="runs-queue-pick")
            queue_up = gr.Button("▲ Move up", size="sm")
            queue_front = gr.Button("⇈ To front", size="sm")
            queue_cancel = gr.Button("✕ Cancel", size="sm", variant="stop", elem_id="runs-queue-cancel")
    with gr.Accordion("Compare loss curves", open=True):
        compare = gr.CheckboxGroup(label="Runs to overlay", choices=[], elem_id="runs-compare")
        smoothing = gr.Slider(0.0, 0.99, value=0.9, step=0.01, label="Smoothing (EMA)")
        overlay = gr.Plot(label="Loss by run", elem_id="runs-overlay")
    with gr.Accordion("Config diff", open=False):
        with gr.Row():
            diff_a = gr.Dropdown(label="Run A", choices=[], elem_id="runs-diff-a")
            diff_b = gr.Dropdown(label="Run B", choices=[], elem_id="runs-diff-b")
        diff = gr.Dataframe(headers=["key", "A", "B"], interactive=False, elem_id="runs-diff")
    with gr.Accordion("Samples: prompt × step", open=False):
        with gr.Row():
            grid_run = gr.Dropdown(label="Run", choices=[], elem_id="runs-grid-run")
            grid_prompt = gr.Dropdown(label="Prompt (all when empty)", choices=[], elem_id="runs-grid-prompt")
        grid = gr.Image(label="Grid", type="pil", interactive=False, elem_id="runs-grid")
        with gr.Row():
            saved = gr.Dropdown(label="Saved epoch / step", choices=[], elem_id="runs-saved")
            best = gr.Button("★ Mark as best", elem_id="runs-best")
        with gr.Row():
            layout = gr.Radio(list(LAYOUTS), value="comfyui", label="Export layout", elem_id="runs-layout",
                              info="ComfyUI: as diffusion-pipe saves it · diffusers: load_lora_weights · "
                                   "kohya: lora_unet_* with alpha")
            export = gr.Button("Export LoRA", elem_id="runs-export")
            download = gr.DownloadButton("Download", visible=False, elem_id="runs-download")
    with gr.Accordion("Delete a run", open=False):
        confirm = gr.Textbox(label="Type the run id to confirm", elem_id="runs-confirm")
        delete = gr.Button("Delete run", variant="stop", elem_id="runs-delete")
    return RunsHandles(refresh, table, compare, smoothing, overlay, diff_a, diff_b, diff, grid_run, grid_prompt,
                       grid, saved, best, layout, export, download, confirm, delete, message, queue_table,
                       queue_pick, queue_up, queue_front, queue_cancel)


def _row(info: RunInfo, state: view.MonitorState) -> list:
    saves = saved_folders(info.run_dir, info.meta)
    last = f"{state.losses[-1]:.4g}" if state.losses else ""
    return [info.run_id, info.name, info.backend, info.status, state.steps[-1] if state.steps else 0, last,
            len(saves), best_of(info.run_dir) or "", info.created]


def _state(info: RunInfo) -> view.MonitorState:
    return view.fold(load_all(info.run_dir), info.run_dir)


def refresh_all(services: Services):
    """Table rows, the choices of every run picker, and the queue."""
    infos = services.manager.runs()
    rows = [_row(info, _state(info)) for info in infos]
    ids = [i.run_id for i in infos]
    pick = gr.Dropdown(choices=ids)
    return (rows, gr.CheckboxGroup(choices=ids), pick, pick, pick, *queue_view(services))


def queue_view(services: Services):
    queued = services.manager.queued()
    rows = [[i + 1, info.run_id, info.name] for i, info in enumerate(queued)]
    return rows, gr.Dropdown(choices=[q.run_id for q in queued], value=None)


def queue_action(services: Services, run_id: str | None, action: str):
    if not run_id:
        raise RunError("pick a queued run first")
    ids = [q.run_id for q in services.manager.queued()]
    if action == "cancel":
        services.manager.cancel(run_id)
    elif run_id in ids:
        services.manager.move(run_id, 0 if action == "front" else max(0, ids.index(run_id) - 1))
    return queue_view(services)


def overlay(services: Services, run_ids: list[str], smoothing: float):
    curves = {rid: _state(services.manager.info(rid)) for rid in run_ids or []}
    return runs_view.overlay_figure(curves, smoothing)


def diff(services: Services, a: str | None, b: str | None):
    if not a or not b:
        return []
    ia, ib = services.manager.info(a), services.manager.info(b)
    return [list(r) for r in runs_view.config_diff(runs_view.run_config(ia.run_dir, ia.meta),
                                                   runs_view.run_config(ib.run_dir, ib.meta))]


def pick_grid_run(services: Services, run_id: str | None):
    """Prompt choices and saved folders of the run, and its full grid."""
    if not run_id:
        return gr.Dropdown(choices=[]), gr.Dropdown(choices=[]), None
    info = services.manager.info(run_id)
    state = _state(info)
    prompts = sorted({s[2] for s in state.samples})
    saves = saved_folders(info.run_dir, info.meta)
    return (gr.Dropdown(choices=prompts, value=None), gr.Dropdown(choices=saves, value=best_of(info.run_dir)),
            _grid_image(state, None))


def _grid_image(state: view.MonitorState, prompt: str | None):
    grid = runs_view.sample_grid(state.samples, prompt or None)
    return None if grid.empty else runs_view.compose_grid(grid)


def wire(h: RunsHandles, services: Services) -> None:
    def guarded(fn):
        def inner(*args):
            try:
                return fn(*args)
            except RunError as exc:
                raise gr.Error(str(exc)) from exc
        return inner

    refresh_outputs = [h.table, h.compare, h.diff_a, h.diff_b, h.grid_run, h.queue_table, h.queue_pick]
    for button, action in ((h.queue_up, "up"), (h.queue_front, "front"), (h.queue_cancel, "cancel")):
        button.click(guarded(lambda r, a=action: queue_action(services, r, a)), inputs=h.queue_pick,
                     outputs=[h.queue_table, h.queue_pick], api_name=f"queue_{action}")
    h.refresh.click(guarded(lambda: refresh_all(services)), outputs=refresh_outputs, api_name="runs_table")
    gr.on([h.compare.input, h.smoothing.release], guarded(lambda ids, s: overlay(services, ids, s)),
          inputs=[h.compare, h.smoothing], outputs=h.overlay)
    gr.on([h.diff_a.input, h.diff_b.input], guarded(lambda a, b: diff(services, a, b)),
          inputs=[h.diff_a, h.diff_b], outputs=h.diff, api_name="diff_runs")
    h.grid_run.input(guarded(lambda r: pick_grid_run(services, r)), inputs=h.grid_run,
                     outputs=[h.grid_prompt, h.saved, h.grid])
    h.grid_prompt.input(guarded(lambda r, p: _grid_image(_state(services.manager.info(r)), p)),
                        inputs=[h.grid_run, h.grid_prompt], outputs=h.grid)

    def on_best(run_id, folder):
        mark_best(services.manager.info(run_id), folder or "")
        return f"★ {folder} is now the best save of `{run_id}`."

    def on_delete(run_id, confirm):
        delete_run(services.manager.info(run_id or ""), confirm or "")
        return f"Deleted run `{run_id}`."

    def on_export(run_id, folder, layout):
        if not run_id or not folder:
            raise RunError("pick a run and one of its saved epochs first")
        path = export_lora(services.manager.info(run_id), folder, layout)
        return gr.DownloadButton(f"Download {path.name}", value=str(path), visible=True), f"Exported `{path}`."

    h.export.click(guarded(on_export), inputs=[h.grid_run, h.saved, h.layout], outputs=[h.download, h.message],
                   api_name="export_lora")
    h.best.click(guarded(on_best), inputs=[h.grid_run, h.saved], outputs=h.message, api_name="mark_best").then(
        guarded(lambda: refresh_all(services)), outputs=refresh_outputs)
    h.delete.click(guarded(on_delete), inputs=[h.grid_run, h.confirm], outputs=h.message).then(
        guarded(lambda: refresh_all(services)), outputs=refresh_outputs)
