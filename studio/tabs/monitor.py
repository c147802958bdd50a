"""Live monitor: attach to a run and stream its status, loss chart, samples and log into the page.

The stream is a generator callback over ``RunManager.event_batches``: the trainer runs in its own
process, the handler only reads the run folder, so a page reload simply attaches again from the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr

from studio import view
from studio.services import Services
from trainers.commands import Command
from trainers.runs import RunError, RunInfo


@dataclass
class MonitorHandles:
    picker: gr.Dropdown
    refresh: gr.Button
    attach: gr.Button
    stop: gr.Button
    status: gr.Markdown
    loss_plot: gr.Plot
    gallery: gr.Gallery
    log: gr.Textbox
    message: gr.Markdown

    @property
    def stream_outputs(self) -> list:
        return [self.status, self.loss_plot, self.gallery, self.log]


def run_label(info: RunInfo) -> str:
    return f"{info.run_id} · {info.name} · {info.status}"


def run_choices(services: Services) -> list[tuple[str, str]]:
    return [(run_label(r), r.run_id) for r in services.manager.runs()]


def render(services: Services) -> MonitorHandles:
    with gr.Row():
        picker = gr.Dropdown(label="Run", choices=[], value=None, scale=4, elem_id="monitor-run")
        refresh = gr.Button("↻ Refresh list", scale=1, size="sm")
        attach = gr.Button("Attach", scale=1, size="sm", elem_id="monitor-attach")
        stop = gr.Button("■ Stop", variant="stop", scale=1, size="sm", elem_id="monitor-stop")
    status = gr.Markdown(view.status_markdown(view.MonitorState(), None), elem_id="dp-status")
    message = gr.Markdown("", elem_id="monitor-message")
    with gr.Row():
        loss_plot = gr.Plot(label="Loss", elem_id="monitor-loss")
        gallery = gr.Gallery(label="Samples (newest first)", columns=4, height=360, elem_id="monitor-samples",
                             format="png")
    log = gr.Textbox(label="Log", lines=12, max_lines=12, autoscroll=True, interactive=False,
                     elem_id="monitor-log")
    return MonitorHandles(picker, refresh, attach, stop, status, loss_plot, gallery, log, message)


def stream(services: Services, run_id: str | None) -> Iterator[tuple]:
    """Yield (status, figure, gallery, log) after every batch of new events, until the run ends."""
    state = view.MonitorState()
    if not run_id:
        yield _frame(state, None)
        return
    try:
        run_dir = services.manager.run_dir(run_id)
        for batch in services.manager.event_batches(run_id):
            view.fold(batch, run_dir, state)
            yield _frame(state, run_id)
    except RunError as exc:
        state.logs.append(f"[ERROR] {exc}")
    yield _frame(state, run_id)


def streamer(services: Services):
    """The generator callback streaming one run into the monitor's outputs (shared with the wizard)."""

    def do_stream(run_id):
        yield from stream(services, run_id)

    return do_stream


def _frame(state: view.MonitorState, run_id: str | None) -> tuple:
    return (view.status_markdown(state, run_id), view.loss_figure(state), view.gallery_items(state),
            view.log_text(state))


def _default_run(services: Services) -> str | None:
    runs = services.manager.runs()
    pick = [r for r in runs if r.live] or runs
    return pick[0].run_id if pick else None


def wire(h: MonitorHandles, services: Services, current_run: gr.State, demo: gr.Blocks) -> None:
    def on_load():
        run_id = _default_run(services)
        return gr.Dropdown(choices=run_choices(services), value=run_id), run_id

    def on_refresh(run_id):
        return gr.Dropdown(choices=run_choices(services), value=run_id)

    def on_stop(run_id):
        if not run_id:
            return "No run attached: pick one in the list first."
        try:
            services.manager.send(run_id, Command.STOP)
        except RunError as exc:
            return f"⚠ {exc}"
        return "Stop requested: the trainer saves its LoRA and stops at the next step."

    do_stream = streamer(services)
    h.refresh.click(on_refresh, inputs=current_run, outputs=h.picker, api_name="list_runs")
    attach_ev = gr.on([h.attach.click, h.picker.input], lambda r: r, inputs=h.picker, outputs=current_run)
    attach_ev.then(do_stream, inputs=current_run, outputs=h.stream_outputs, concurrency_limit=None,
                   api_name="watch_run")
    demo.load(on_load, outputs=[h.picker, current_run]).then(
        do_stream, inputs=current_run, outputs=h.stream_outputs, concurrency_limit=None)
    h.stop.click(on_stop, inputs=current_run, outputs=h.message, api_name="stop_run")
