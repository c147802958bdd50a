"""Chroma setup: the guided path. This first version starts the embedded demo profile."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio.services import Services
from studio.tabs import monitor
from trainers.runs import RunError

DEMO_TEXT = """
### Embedded demo (runs on a CPU)
A tiny Chroma-architecture model ships with dp-studio, with a small dataset that teaches a new look behind
the trigger word. Press **Start demo**: the studio switches to the live monitor, where the loss chart grows
and the sample previews (fixed prompts and seeds) drift toward the concept within a few minutes.
"""


@dataclass
class WizardHandles:
    profile_path: gr.Textbox
    start: gr.Button
    message: gr.Markdown


def render(services: Services) -> WizardHandles:
    gr.Markdown(DEMO_TEXT)
    profile_path = gr.Textbox(label="Profile (main TOML)", value=str(services.demo_main), interactive=False,
                              elem_id="wizard-profile")
    start = gr.Button("▶ Start demo", variant="primary", elem_id="wizard-start")
    message = gr.Markdown("", elem_id="wizard-message")
    return WizardHandles(profile_path, start, message)


def wire(h: WizardHandles, services: Services, current_run: gr.State, tabs: gr.Tabs, monitor_tab: str,
         mon: monitor.MonitorHandles, tokens: monitor.StreamTokens) -> None:
    def on_start(main_path):
        try:
            run_id = services.manager.start(main_path, name="Chroma demo")
        except RunError as exc:
            return None, gr.Tabs(), gr.Dropdown(), f"⚠ Could not start: {exc}"
        choices = monitor.run_choices(services)
        queued = [q.run_id for q in services.manager.queued()]
        note = (f"Run `{run_id}` is queued (position {queued.index(run_id) + 1}): it starts when the device "
                "is free." if run_id in queued else f"Started run `{run_id}`.")
        return run_id, gr.Tabs(selected=monitor_tab), gr.Dropdown(choices=choices, value=run_id), note

    started = h.start.click(on_start, inputs=h.profile_path, outputs=[current_run, tabs, mon.picker, h.message])
    started.then(monitor.streamer(services, tokens), inputs=[current_run, *mon.view_options],
                 outputs=mon.stream_outputs, concurrency_limit=None)
