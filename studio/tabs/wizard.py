"""Chroma setup: the guided path. The embedded demo in one click, or the user's own LoRA in five steps: model
files, dataset, preset and memory, review, start. Chroma first; the model picker opens the same path for every
model studio/wizard_models.py lists (Flux, SDXL)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio import wizard_view as wv
from studio.services import Services
from studio.tabs import monitor
from studio.wizard_models import WIZARD_MODELS, wizard_model
from trainers.config import validate_texts
from trainers.config.issues import ConfigParseError
from trainers.config.paths_check import config_base
from trainers.config.toml_io import loads_plain
from trainers.paths import default_runs_root
from trainers.profiles.store import ProfileError, ProfileStore, ProfileTexts
from trainers.runs import RunError

DEMO_TEXT = """
### Embedded demo (runs on a CPU)
A tiny Chroma-architecture model ships with dp-studio, with a small dataset that teaches a new look behind
the trigger word. Press **Start demo**: the studio switches to the live monitor, where the loss chart grows
and the sample previews (fixed prompts and seeds) drift toward the concept within a few minutes.
"""
CARDS = [8, 12, 16, 24, 32, 48, 80]


@dataclass
class WizardHandles:
    profile_path: gr.Textbox
    start: gr.Button
    message: gr.Markdown
    steps: gr.Walkthrough
    model: gr.Radio
    heading: gr.Markdown
    sampling_note: gr.Markdown
    diffusers: gr.Textbox
    transformer: gr.Textbox
    check_models: gr.Button
    models_report: gr.Markdown
    dataset: gr.Textbox
    check_dataset: gr.Button
    dataset_report: gr.Markdown
    browse_dataset: gr.Button
    preset: gr.Radio
    output_dir: gr.Textbox
    run_name: gr.Textbox
    card: gr.Dropdown
    checkpointing: gr.Checkbox
    swap: gr.Slider
    vram: gr.Markdown
    review: gr.Button
    main_text: gr.Code
    dataset_text: gr.Code
    issues: gr.Markdown
    profile_name: gr.Textbox
    launch: gr.Button
    launch_message: gr.Markdown


def render(services: Services) -> WizardHandles:
    with gr.Accordion("Quick start: the embedded demo", open=True):
        gr.Markdown(DEMO_TEXT)
        profile_path = gr.Textbox(label="Profile (main TOML)", value=str(services.demo_main), interactive=False,
                                  elem_id="wizard-profile")
        start = gr.Button("▶ Start demo", variant="primary", elem_id="wizard-start")
        message = gr.Markdown("", elem_id="wizard-message")
    first = wizard_model(None)
    heading = gr.Markdown(f"### Your {first.label} LoRA", elem_id="wiz-heading")
    model = gr.Radio(list(WIZARD_MODELS), value=first.label, label="Model to train", elem_id="wiz-model",
                     info="Every model here trains natively, with live previews; the other types are set up in the "
                          "Config builder.")
    with gr.Walkthrough(selected=1, elem_id="wizard-steps") as steps:
        with gr.Step("1 · Model files", id=1):
            diffusers = gr.Textbox(label=first.diffusers_label, elem_id="wiz-diffusers")
            transformer = gr.Textbox(label=first.transformer_label, elem_id="wiz-transformer")
            check_models = gr.Button("Check model files", elem_id="wiz-check-models")
            models_report = gr.Markdown(elem_id="wiz-models-report")
            next1 = gr.Button("Next: dataset →", elem_id="wiz-next-1")
        with gr.Step("2 · Dataset", id=2):
            dataset = gr.Textbox(label="Dataset folder (images + same-name .txt captions)", elem_id="wiz-dataset")
            with gr.Row():
                check_dataset = gr.Button("Check dataset", elem_id="wiz-check-dataset")
                browse_dataset = gr.Button("Open in the dataset browser (buckets, crops, health)",
                                           elem_id="wiz-browse-dataset")
            dataset_report = gr.Markdown(elem_id="wiz-dataset-report")
            with gr.Row():
                back2 = gr.Button("← Back", elem_id="wiz-back-2")
                next2 = gr.Button("Next: preset and memory →", elem_id="wiz-next-2")
        with gr.Step("3 · Preset and memory", id=3):
            preset = gr.Radio(preset_choices(first.label), value=wv.PRESETS[0], label="Preset", elem_id="wiz-preset")
            output_dir = gr.Textbox(label="Output folder for runs", value=str(default_runs_root()))
            run_name = gr.Textbox(label="Run name (W&B run name)", placeholder="optional")
            with gr.Row():
                card = gr.Dropdown(CARDS, value=24, label="Your GPU memory (GB)", elem_id="wiz-card")
                checkpointing = gr.Checkbox(label="Activation checkpointing", value=False)
                swap = gr.Slider(0, 34, value=0, step=1, label="Blocks to swap to RAM",
                                 info="more than 0 runs on your diffusion-pipe checkout: the native trainer has no "
                                      "block swap (float8 storage and checkpointing save memory natively)")
            vram = gr.Markdown(elem_id="wiz-vram")
            with gr.Row():
                back3 = gr.Button("← Back", elem_id="wiz-back-3")
                review = gr.Button("Review the config →", variant="primary", elem_id="wiz-review")
        with gr.Step("4 · Review and start", id=4):
            sampling_note = gr.Markdown(first.sampling_note, elem_id="wiz-sampling-note")
            with gr.Row():
                main_text = gr.Code(label="Main config", lines=22, elem_id="wiz-main")
                dataset_text = gr.Code(label="Dataset config", lines=22, elem_id="wiz-dataset-toml")
            issues = gr.Markdown(elem_id="wiz-issues")
            profile_name = gr.Textbox(label="Save as profile named", elem_id="wiz-profile-name")
            launch = gr.Button("Save profile and start training", variant="primary", elem_id="wiz-launch")
            launch_message = gr.Markdown(elem_id="wiz-launch-message")
            back4 = gr.Button("← Back", elem_id="wiz-back-4")
    for button, target in ((next1, 2), (back2, 1), (next2, 3), (back3, 2), (back4, 3)):
        button.click(lambda t=target: gr.Walkthrough(selected=t), outputs=steps)
    return WizardHandles(profile_path, start, message, steps, model, heading, sampling_note, diffusers, transformer, check_models,
                         models_report, dataset, check_dataset, dataset_report, browse_dataset, preset, output_dir,
                         run_name,
                         card, checkpointing, swap, vram, review, main_text, dataset_text, issues, profile_name,
                         launch, launch_message)


def preset_choices(model_label: str) -> list[tuple[str, str]]:
    """The shipped presets as (shown, profile name): their settings, named for the picked model."""
    return [(name.replace("Chroma", model_label), name) for name in wv.PRESETS]


def on_model(label: str) -> tuple:
    """Step 1's labels, the heading, the presets' names and the sampling note follow the picked model; the
    previous model's check report is cleared."""
    m = wizard_model(label)
    return (f"### Your {m.label} LoRA", gr.Textbox(label=m.diffusers_label or "(not used)",
                                                  visible=m.folder_key is not None),
            gr.Textbox(label=m.transformer_label),
            "", gr.Radio(choices=preset_choices(m.label)), m.sampling_note)


def _choices(preset, diffusers, transformer, dataset, output_dir, run_name, checkpointing, swap, model=None):
    text = [(v or "").strip() for v in (diffusers, transformer, dataset, output_dir, run_name)]
    return wv.WizardChoices(preset or wv.PRESETS[0], *text, bool(checkpointing), int(swap or 0),
                            wizard_model(model).label)


def _config_base(main_path: Path, main_text: str) -> Path:
    """Where the saved profile's relative paths will resolve (trainers.config.paths_check.config_base)."""
    try:
        data = loads_plain(main_text, main_path.name)
    except ConfigParseError:
        return main_path.parent  # validate_texts reports the syntax error
    return config_base(main_path, data)


def review(pair: ProfileTexts) -> tuple[str, list[str]]:
    """Validate the pair as it will be saved (both files side by side, every path checked): the issue list as
    Markdown, and the errors that must be fixed before the run may start."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / pair.dataset_name).write_text(pair.dataset_text, encoding="utf-8")
        base = _config_base(Path(folder) / pair.main_name, pair.main_text)  # the rule train and Start use
        found = validate_texts(pair.main_text, pair.dataset_text, main_file=pair.main_name,
                               dataset_file=pair.dataset_name, base_dir=base)
    if not found:
        return "✓ The config is valid: every key checked, every path found.", []
    return ("\n".join(f"- {'✗' if i.is_error else '⚠'} `{i.format()}`" for i in found),
            [i.format() for i in found if i.is_error])


def launch_state(errors: list[str]) -> tuple:
    """The launch button (disabled while errors remain) and the note beside it that lists them."""
    if not errors:
        return gr.Button(interactive=True), ""
    listed = "\n".join(f"- ✗ `{e}`" for e in errors)
    return (gr.Button(interactive=False),
            f"**Fix {len(errors)} error{'' if len(errors) == 1 else 's'} before starting** (edit the config "
            f"above, or go back a step):\n{listed}")


def wire(h: WizardHandles, services: Services, current_run: gr.State, tabs: gr.Tabs, monitor_tab: str,
         mon: monitor.MonitorHandles, tokens: monitor.MonitorViews) -> None:
    store = ProfileStore()
    choice_inputs = [h.preset, h.diffusers, h.transformer, h.dataset, h.output_dir, h.run_name, h.checkpointing,
                     h.swap, h.model]

    def started(run_id: str, note: str):
        choices = monitor.run_choices(services)
        queued = [q.run_id for q in services.manager.queued()]
        if run_id in queued:
            note = (f"Run `{run_id}` is queued (position {queued.index(run_id) + 1}): it starts when the "
                    "device is free.")
        return run_id, gr.Tabs(selected=monitor_tab), gr.Dropdown(choices=choices, value=run_id), note, 0

    def on_start(main_path):
        try:
            return started(services.manager.start(main_path, name="Chroma demo"), "")
        except RunError as exc:
            return gr.skip(), gr.Tabs(), gr.Dropdown(), f"⚠ Could not start: {exc}", gr.skip()

    def on_vram(*args):
        pair = wv.build_pair(store, _choices(*args[:-1]))
        return wv.vram_markdown(wv.vram_settings(pair.main_text, pair.dataset_text), int(args[-1]))

    def on_review(*args):
        c = _choices(*args)
        pair = wv.build_pair(store, c)
        found, errors = review(pair)
        return (gr.Walkthrough(selected=4), pair.main_text, pair.dataset_text, found,
                c.run_name or f"{c.preset.replace('Chroma', c.model)} · {Path(c.dataset_dir).name}",
                *launch_state(errors))

    def on_edit(main_text, dataset_text, preset):
        base = store.texts(preset)
        found, errors = review(ProfileTexts(base.main_name, main_text, base.dataset_name, dataset_text))
        return found, *launch_state(errors)

    def on_launch(name, main_text, dataset_text, preset, model):
        base = store.texts(preset)
        _, errors = review(ProfileTexts(base.main_name, main_text, base.dataset_name, dataset_text))
        if errors:  # the button is disabled then; a request sent anyway is refused the same way
            return gr.skip(), gr.Tabs(), gr.Dropdown(), launch_state(errors)[1], gr.skip()
        try:
            report = store.create(name.strip(), ProfileTexts(base.main_name, main_text, base.dataset_name,
                                                             dataset_text), message=f"created by the wizard ({wizard_model(model).label})")
            run_id = services.manager.start(report.profile.main_path, name=name.strip())
        except (ProfileError, RunError) as exc:
            return gr.skip(), gr.Tabs(), gr.Dropdown(), f"⚠ {exc}", gr.skip()
        return started(run_id, f"Saved profile **{report.profile.name}** and started run `{run_id}`.")

    stream = monitor.stream_event(services, tokens, current_run, mon)
    h.start.click(on_start, inputs=h.profile_path,
                  outputs=[current_run, tabs, mon.picker, h.message, *mon.scrub_reset]).then(**stream)
    h.check_models.click(lambda d, t, m: wv.check_models(d, t, m)[0], inputs=[h.diffusers, h.transformer, h.model],
                         outputs=h.models_report)
    h.model.input(on_model, inputs=h.model, outputs=[h.heading, h.diffusers, h.transformer, h.models_report,
                                                      h.preset, h.sampling_note])
    h.check_dataset.click(lambda d, p: wv.check_dataset(d, wv.preset_resolution(p))[0],
                          inputs=[h.dataset, h.preset], outputs=h.dataset_report)
    gr.on([h.preset.input, h.model.input, h.card.input, h.checkpointing.input, h.swap.release, h.steps.change], on_vram,
          inputs=[*choice_inputs, h.card], outputs=h.vram)
    h.review.click(on_review, inputs=choice_inputs,
                   outputs=[h.steps, h.main_text, h.dataset_text, h.issues, h.profile_name, h.launch,
                            h.launch_message])
    gr.on([h.main_text.input, h.dataset_text.input], on_edit, inputs=[h.main_text, h.dataset_text, h.preset],
          outputs=[h.issues, h.launch, h.launch_message], trigger_mode="always_last")
    h.launch.click(on_launch, inputs=[h.profile_name, h.main_text, h.dataset_text, h.preset, h.model],
                   outputs=[current_run, tabs, mon.picker, h.launch_message, *mon.scrub_reset]).then(**stream)
