"""The page: a header and the studio's tabs, wired to the shared services."""

from __future__ import annotations

import gradio as gr

from studio import api, served, wizard_view
from studio.services import Services
from studio.tabs import builder, datasets, monitor, profiles, runs, wizard

CSS = """
#dp-header h1 {margin-bottom: 0}
#dp-status {min-height: 2.5em}
.dp-bar {height: 8px; background: #e5e7eb; border-radius: 4px; margin-top: 4px; overflow: hidden}
.dp-fill {height: 100%; background: #f97316; transition: width 0.4s}
button[role="tab"][aria-selected="true"] {color: var(--body-text-color)}
.stepper-container {padding-inline: 4.5rem; box-sizing: border-box}
#datasets-table thead th, #datasets-table thead th *, #datasets-buckets thead th, #datasets-buckets thead th *
    {white-space: nowrap; word-break: keep-all; overflow-wrap: normal}
""" + builder.CSS



def theme() -> gr.themes.Base:
    """Gradio's default theme with text and button colours that reach WCAG AA contrast (4.5:1) in light and dark
    mode: the default orange buttons, red stop buttons and grey hint text do not (axe-core's color-contrast)."""
    red = gr.themes.colors.red
    return gr.themes.Default().set(
        button_primary_background_fill="*primary_700", button_primary_background_fill_dark="*primary_700",
        button_primary_background_fill_hover="*primary_800", button_primary_background_fill_hover_dark="*primary_800",
        button_cancel_background_fill=red.c700, button_cancel_background_fill_dark=red.c700,
        button_cancel_background_fill_hover=red.c800, button_cancel_background_fill_hover_dark=red.c800,
        body_text_color_subdued="*neutral_600", body_text_color_subdued_dark="*neutral_400")


TAB_WIZARD, TAB_BUILDER, TAB_DATASETS, TAB_MONITOR, TAB_RUNS = "wizard", "builder", "datasets", "monitor", "runs"
TAB_PROFILES = "profiles"


def build_app(services: Services) -> gr.Blocks:
    """Blocks with the four tabs; per-session data lives in gr.State, never in module globals."""
    # Only the files a page shows are served, from one folder (studio/served.py); output folders never are.
    served.prune()
    gr.set_static_paths([str(served.served_dir())])
    with gr.Blocks(title="dp-studio") as demo:
        named = api.record_explicit_names(demo)  # events given an api_name stay public; hide_unnamed hides the rest
        gr.Markdown("# dp-studio\nTrain LoRAs for Chroma and every diffusion-pipe model, and watch them learn.",
                    elem_id="dp-header")
        current_run = gr.State(None)
        with gr.Tabs(selected=TAB_WIZARD) as tabs:
            with gr.Tab("Chroma setup", id=TAB_WIZARD):
                wiz = wizard.render(services)
            with gr.Tab("Config builder", id=TAB_BUILDER) as builder_tab:
                build = builder.render(services)
            with gr.Tab("Profiles", id=TAB_PROFILES) as profiles_tab:
                prof = profiles.render(services)
            with gr.Tab("Dataset browser", id=TAB_DATASETS):
                data = datasets.render(services)
            with gr.Tab("Live monitor", id=TAB_MONITOR) as monitor_tab:
                mon = monitor.render(services)
            with gr.Tab("Runs library", id=TAB_RUNS) as runs_tab:
                lib = runs.render(services)
        builder.wire(build, services)
        profiles.wire(prof, services, build, tabs, TAB_BUILDER)
        builder_tab.select(builder.refresh_picker, outputs=build.picker, api_visibility="private")
        profiles_tab.select(profiles.refresh_all, inputs=prof.selected, outputs=profiles.listing_outputs(prof),
                            api_visibility="private")
        datasets.wire(data, services)
        tokens = monitor.MonitorViews()
        runs.wire(lib, services, monitor.MonitorLink(current_run, tabs, TAB_MONITOR, mon, tokens))
        runs_tab.select(lambda: runs.refresh_all(services),
                        outputs=[lib.table, lib.compare, lib.diff_a, lib.diff_b, lib.grid_run, lib.queue_table,
                                 lib.queue_pick])
        monitor.wire(mon, services, current_run, demo, tokens, monitor_tab)
        wizard.wire(wiz, services, current_run, tabs, TAB_MONITOR, mon, tokens)
        # The wizard's dataset, opened in the dataset browser at the preset's resolution.
        wiz.browse_dataset.click(lambda folder, preset: (gr.Tabs(selected=TAB_DATASETS), folder,
                                                         wizard_view.preset_resolution(preset)),
                                 inputs=[wiz.dataset, wiz.preset], outputs=[tabs, data.folder, data.resolution],
                                 api_visibility="private").then(**datasets.browse_event(data),
                                                                api_visibility="private")
        # A reload mid-run lands on the monitor, not on the setup the run was started from.
        # Only a live run moves the page (to the monitor); otherwise the page stays where it opened, so a tab the
        # user clicked before this answer arrives is not taken back.
        demo.load(lambda: gr.Tabs(selected=TAB_MONITOR) if landing_tab(services) == TAB_MONITOR else gr.skip(),
                  outputs=tabs, api_visibility="private")
        api.register(services)
    api.guard_all(demo)
    api.hide_unnamed(demo, named)
    return demo


def landing_tab(services: Services) -> str:
    """The tab a fresh page opens on: the live monitor while a run is live, else Chroma setup."""
    return TAB_MONITOR if any(run.live for run in services.manager.runs()) else TAB_WIZARD
