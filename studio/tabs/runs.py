"""Runs library: every run under the known output folders; compare, inspect samples (per run and across runs),
render samples for a saved epoch, pick the best epoch, export, resume, delete."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio import runs_view, served, view
from studio.services import Services
from studio.tabs.monitor import MonitorLink
from studio.user_errors import user_mistake
from trainers.checkpoints import resume_points
from trainers.events import load_all
from trainers.run_library import (
    LAYOUTS,
    best_of,
    check_saved,
    delete_run,
    export_lora,
    mark_best,
    render_samples,
    saved_folders,
)
from trainers.runs import RunError, RunInfo

TABLE_HEADERS = ["run", "name", "backend", "status", "steps", "last loss", "saves", "best", "created"]
RESUME_NOTE = """**full state**: continues the same run exactly (LoRA, optimizer, schedule, data order).
**LoRA only**: starts a NEW run from those weights, with a fresh optimizer and schedule."""


@dataclass
class RunsHandles:
    refresh: gr.Button
    table: gr.Dataframe
    compare: gr.CheckboxGroup
    smoothing: gr.Slider
    overlay: gr.Plot
    cross_pair: gr.Dropdown
    cross_grid: gr.Image
    diff_a: gr.Dropdown
    diff_b: gr.Dropdown
    diff: gr.Dataframe
    grid_run: gr.Dropdown
    grid_prompt: gr.Dropdown
    grid: gr.Image
    saved: gr.Dropdown
    best: gr.Button
    sidecar_prompts: gr.Textbox
    sidecar_seeds: gr.Textbox
    render: gr.Button
    render_progress: gr.Markdown
    layout: gr.Radio
    export: gr.Button
    download: gr.DownloadButton
    check: gr.Button
    check_report: gr.Markdown
    resume_point: gr.Dropdown
    resume: gr.Button
    confirm: gr.Textbox
    delete: gr.Button
    message: gr.Markdown
    queue_table: gr.Dataframe
    queue_pick: gr.Dropdown
    queue_up: gr.Button
    queue_front: gr.Button
    queue_cancel: gr.Button
    workflow: gr.Button
    workflow_download: gr.DownloadButton
    diff_note: gr.Markdown
    export_message: gr.Markdown


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
    with gr.Accordion("Compare runs", open=True):
        compare = gr.CheckboxGroup(label="Runs to compare", choices=[], elem_id="runs-compare")
        smoothing = gr.Slider(0.0, 0.99, value=0.9, step=0.01, label="Smoothing (EMA)")
        overlay = gr.Plot(label="Loss and eval loss by run", elem_id="runs-overlay")
        cross_pair = gr.Dropdown(label="Same prompt and seed across the ticked runs", choices=[],
                                 elem_id="runs-cross-pair")
        cross_grid = gr.Image(label="Run × step", type="pil", interactive=False, elem_id="runs-cross-grid")
    with gr.Accordion("Config diff", open=False):
        with gr.Row():
            diff_a = gr.Dropdown(label="Run A", choices=[], elem_id="runs-diff-a")
            diff_b = gr.Dropdown(label="Run B", choices=[], elem_id="runs-diff-b")
        diff_note = gr.Markdown("", elem_id="runs-diff-note")
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
            sidecar_prompts = gr.Textbox(label="Prompts, one a line (empty: the run's [studio] prompts)", lines=2,
                                         elem_id="runs-sidecar-prompts")
            sidecar_seeds = gr.Textbox(label="Seeds (empty: the run's)", placeholder="7, 42",
                                       elem_id="runs-sidecar-seeds")
        render_button = gr.Button("Render samples for this epoch", elem_id="runs-render")
        render_progress = gr.Markdown("", elem_id="runs-render-progress")
        with gr.Row():
            layout = gr.Radio(list(LAYOUTS), value="comfyui", label="Export layout", elem_id="runs-layout",
                              info="ComfyUI: as diffusion-pipe saves it · diffusers: load_lora_weights · "
                                   "kohya: lora_unet_* with alpha")
            export = gr.Button("Export LoRA", elem_id="runs-export")
            download = gr.DownloadButton("Download", visible=False, elem_id="runs-download")
        with gr.Row():
            workflow = gr.Button("ComfyUI workflow", size="sm", elem_id="runs-workflow")
            workflow_download = gr.DownloadButton("Download workflow", visible=False, size="sm",
                                                  elem_id="runs-workflow-download")
        export_message = gr.Markdown("", elem_id="runs-export-message")  # beside its buttons, not atop the page
        check = gr.Button("Check LoRA keys against the base model", size="sm", elem_id="runs-check")
        check_report = gr.Markdown("", elem_id="runs-check-report")
    with gr.Accordion("Resume training", open=False):
        gr.Markdown(RESUME_NOTE)
        with gr.Row():
            resume_point = gr.Dropdown(label="Resume point of the run picked above", choices=[], scale=4,
                                       elem_id="runs-resume-point")
            resume = gr.Button("Resume", scale=1, elem_id="runs-resume")
    with gr.Accordion("Delete a run", open=False):
        confirm = gr.Textbox(label="Type the run id to confirm", elem_id="runs-confirm")
        delete = gr.Button("Delete run", variant="stop", elem_id="runs-delete")
    return RunsHandles(refresh, table, compare, smoothing, overlay, cross_pair, cross_grid, diff_a, diff_b, diff,
                       grid_run, grid_prompt, grid, saved, best, sidecar_prompts, sidecar_seeds, render_button,
                       render_progress, layout, export, download, check, check_report, resume_point, resume, confirm,
                       delete, message,
                       queue_table, queue_pick, queue_up, queue_front, queue_cancel, workflow, workflow_download,
                       diff_note, export_message)


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
    return runs_view.overlay_figure(_labelled_states(services, run_ids), smoothing)


def _labelled_states(services: Services, run_ids: list[str]) -> dict[str, view.MonitorState]:
    infos = [services.manager.info(rid) for rid in run_ids or []]
    return {f"{i.run_id} · {i.name}": _state(i) for i in infos}


def compare_view(services: Services, run_ids: list[str], smoothing: float):
    """The ticked runs' overlaid curves, their (prompt, seed) pairs with the first one picked, and its run × step
    grid (every run folder is read once)."""
    states = _labelled_states(services, run_ids)
    fig = runs_view.overlay_figure(states, smoothing)
    pairs = runs_view.shared_pairs({label: s.samples for label, s in states.items()})
    first = pairs[0][1] if pairs else None
    return fig, gr.Dropdown(choices=pairs, value=first), _cross_image(states, first)


def cross_grid(services: Services, run_ids: list[str], key: str | None):
    return _cross_image(_labelled_states(services, run_ids), key)


def _cross_image(states: dict[str, view.MonitorState], key: str | None):
    if not key or not states:
        return None
    prompt, seed = runs_view.parse_pair_key(key)
    grid = runs_view.cross_run_grid({label: s.samples for label, s in states.items()}, prompt, seed)
    return None if grid.empty else runs_view.compose_grid(grid)


def diff(services: Services, a: str | None, b: str | None):
    """The differing keys of the two runs' configs, and a line saying how many (or that they are identical)."""
    if not a or not b:
        return [], ""
    ia, ib = services.manager.info(a), services.manager.info(b)
    rows = runs_view.config_diff(runs_view.run_config(ia.run_dir, ia.meta),
                                 runs_view.run_config(ib.run_dir, ib.meta))
    return [list(r) for r in rows], runs_view.diff_note(a, b, rows)


def pick_grid_run(services: Services, run_id: str | None):
    """Prompt choices and saved folders of the run, and its full grid."""
    if not run_id:
        return gr.Dropdown(choices=[]), gr.Dropdown(choices=[]), None
    info = services.manager.info(run_id)
    state = _state(info)
    prompts = sorted({s.prompt for s in state.samples})
    saves = saved_folders(info.run_dir, info.meta)
    return (gr.Dropdown(choices=prompts, value=None), gr.Dropdown(choices=saves, value=best_of(info.run_dir)),
            _grid_image(state, None))


def _grid_image(state: view.MonitorState, prompt: str | None):
    grid = runs_view.sample_grid(state.samples, prompt or None)
    return None if grid.empty else runs_view.compose_grid(grid)


def resume_choices(services: Services, run_id: str | None):
    """The run's resume points, newest first, each labelled with its kind."""
    if not run_id:
        return gr.Dropdown(choices=[], value=None)
    choices = [runs_view.resume_choice(p) for p in resume_points(services.manager.run_dir(run_id))]
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)


def render_for_epoch(services: Services, run_id: str | None, folder: str | None, prompts: str, seeds: str):
    """Generator: the sidecar's progress, then the run's grid with the new images."""
    if not run_id or not folder:
        yield "⚠ Pick a run and one of its saved epochs first.", gr.skip(), gr.skip()
        return
    try:
        info = services.manager.info(run_id)
        yield f"⏳ Rendering with `{folder}`: loading the base model…", gr.skip(), gr.skip()
        for line in render_samples(info, folder, runs_view.parse_prompts(prompts), runs_view.parse_seeds(seeds)):
            yield f"⏳ {line}", gr.skip(), gr.skip()
    except (RunError, ValueError) as exc:
        yield f"⚠ Rendering failed: {exc}", gr.skip(), gr.skip()
        return
    state = _state(info)
    yield (f"✓ Rendered samples with `{folder}`.", _grid_image(state, None),
           gr.Dropdown(choices=sorted({s.prompt for s in state.samples}), value=None))


def export_and_check(services: Services, run_id: str | None, folder: str | None, layout: str) -> tuple:
    """Export a saved LoRA, then check the exported file's keys against the run's base model."""
    if not run_id or not folder:
        raise RunError("pick a run and one of its saved epochs first")
    info = services.manager.info(run_id)
    path = export_lora(info, folder, layout)
    # The file the user takes away is checked too: every key must still name a module of the model.
    report = check_saved(info, folder, path)
    shown = served.publish(path, services.manager.roots)  # this file alone is served, not its run folder
    return (gr.DownloadButton(f"Download {path.name}", value=str(shown), visible=True),
            f"Exported `{path}`. Key check: {report.summary()}", report.markdown())


def export_workflow(services: Services, run_id: str | None, folder: str | None) -> tuple:
    """Export the saved LoRA for ComfyUI and write a ComfyUI API-format workflow that loads it (the run's base
    model, its sample prompts, seeds, size, steps and guidance); offer the workflow for download."""
    from trainers.comfyui_workflow import workflow_path, write_workflow

    if not run_id or not folder:
        raise RunError("pick a run and one of its saved epochs first")
    info = services.manager.info(run_id)
    lora = export_lora(info, folder, "comfyui")
    path = write_workflow(info, lora, workflow_path(lora))
    shown = served.publish(path, services.manager.roots)
    return (gr.DownloadButton(f"Download {path.name}", value=str(shown), visible=True),
            f"Wrote the ComfyUI workflow `{path.name}` for `{lora.name}`: put the LoRA in ComfyUI's `models/loras/`, "
            "and queue the workflow (ComfyUI's API format, as its `/prompt` endpoint takes it).")


def check_report(services: Services, run_id: str | None, folder: str | None) -> str:
    """The key check of a saved LoRA against the run's base model, as Markdown."""
    if not run_id or not folder:
        raise RunError("pick a run and one of its saved epochs first")
    return check_saved(services.manager.info(run_id), folder).markdown()


def wire(h: RunsHandles, services: Services, link: MonitorLink) -> None:
    def guarded(fn):
        def inner(*args):
            try:
                return fn(*args)
            except (RunError, ValueError, KeyError) as exc:
                raise user_mistake(str(exc.args[0] if isinstance(exc, KeyError) else exc)) from exc
        return inner

    refresh_outputs = [h.table, h.compare, h.diff_a, h.diff_b, h.grid_run, h.queue_table, h.queue_pick]
    for button, action in ((h.queue_up, "up"), (h.queue_front, "front"), (h.queue_cancel, "cancel")):
        button.click(guarded(lambda r, a=action: queue_action(services, r, a)), inputs=h.queue_pick,
                     outputs=[h.queue_table, h.queue_pick], api_name=f"queue_{action}")
    h.refresh.click(guarded(lambda: refresh_all(services)), outputs=refresh_outputs, api_name="runs_table")
    h.compare.input(guarded(lambda ids, s: compare_view(services, ids, s)), inputs=[h.compare, h.smoothing],
                    outputs=[h.overlay, h.cross_pair, h.cross_grid], api_visibility="private")
    h.smoothing.release(guarded(lambda ids, s: overlay(services, ids, s)), inputs=[h.compare, h.smoothing],
                        outputs=h.overlay, api_visibility="private")
    h.cross_pair.input(guarded(lambda ids, key: cross_grid(services, ids, key)), inputs=[h.compare, h.cross_pair],
                       outputs=h.cross_grid, api_visibility="private")
    gr.on([h.diff_a.input, h.diff_b.input], guarded(lambda a, b: diff(services, a, b)),
          inputs=[h.diff_a, h.diff_b], outputs=[h.diff, h.diff_note], api_visibility="private")
    h.grid_run.input(guarded(lambda r: pick_grid_run(services, r)), inputs=h.grid_run,
                     outputs=[h.grid_prompt, h.saved, h.grid], api_visibility="private")
    # Separate from the grid, so a run whose checkpoints cannot be read still shows its samples.
    h.grid_run.input(guarded(lambda r: resume_choices(services, r)), inputs=h.grid_run, outputs=h.resume_point,
                     api_visibility="private")
    h.grid_prompt.input(guarded(lambda r, p: _grid_image(_state(services.manager.info(r)), p)),
                        inputs=[h.grid_run, h.grid_prompt], outputs=h.grid, api_visibility="private")
    def on_render(run_id, folder, prompts, seeds):
        yield from render_for_epoch(services, run_id, folder, prompts, seeds)

    h.render.click(on_render, inputs=[h.grid_run, h.saved, h.sidecar_prompts, h.sidecar_seeds],
                   outputs=[h.render_progress, h.grid, h.grid_prompt], api_visibility="private")

    def on_best(run_id, folder):
        mark_best(services.manager.info(run_id), folder or "")
        return f"★ {folder} is now the best save of `{run_id}`."

    def on_delete(run_id, confirm):
        delete_run(services.manager.info(run_id or ""), confirm or "")
        return f"Deleted run `{run_id}`."

    def on_resume(run_id, point):
        if not run_id or not point:
            raise RunError("pick a run and one of its resume points first")
        return link.show(services, services.manager.resume(run_id, point))

    h.export.click(guarded(lambda r, f, lay: export_and_check(services, r, f, lay)),
                   inputs=[h.grid_run, h.saved, h.layout], outputs=[h.download, h.export_message, h.check_report],
                   api_visibility="private")
    h.workflow.click(guarded(lambda r, f: export_workflow(services, r, f)), inputs=[h.grid_run, h.saved],
                     outputs=[h.workflow_download, h.export_message], api_visibility="private")
    h.check.click(guarded(lambda r, f: check_report(services, r, f)), inputs=[h.grid_run, h.saved],
                  outputs=h.check_report, api_visibility="private")
    h.best.click(guarded(on_best), inputs=[h.grid_run, h.saved], outputs=h.message, api_visibility="private").then(
        guarded(lambda: refresh_all(services)), outputs=refresh_outputs, api_visibility="private")
    h.resume.click(guarded(on_resume), inputs=[h.grid_run, h.resume_point], outputs=link.outputs,
                   api_visibility="private").success(**link.stream(services))
    h.delete.click(guarded(on_delete), inputs=[h.grid_run, h.confirm], outputs=h.message,
                   api_visibility="private").then(guarded(lambda: refresh_all(services)), outputs=refresh_outputs,
                                                  api_visibility="private")
