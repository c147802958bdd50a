"""Live monitor: attach to a run and stream its progress, charts, samples, log and resources into the page.

The stream is a generator callback over ``RunManager.event_batches``: the trainer runs in its own process
and the handler only reads the run folder, so a page reload simply attaches again from the start. Changing
a view option re-attaches too (re-reading a run folder is cheap); each browser session has one live stream,
and an older one notices at its next heartbeat that it was replaced and ends.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import gradio as gr

from studio import served, view
from studio.services import Services
from trainers.commands import Command
from trainers.resources import snapshot
from trainers.runs import RunError, RunInfo

HEARTBEAT_S = 1.0
RESOURCES_EVERY_S = 2.0
MIN_FRAME_S = 0.5


@dataclass
class MonitorHandles:
    picker: gr.Dropdown
    refresh: gr.Button
    attach: gr.Button
    stop: gr.Button
    save_now: gr.Button
    sample_now: gr.Button
    status: gr.Markdown
    progress: gr.HTML
    message: gr.Markdown
    smoothing: gr.Slider
    log_y: gr.Checkbox
    loss_plot: gr.Plot
    lr_plot: gr.Plot
    eval_plot: gr.Plot
    grad_plot: gr.Plot
    gallery: gr.Gallery
    scrub: gr.Slider
    level: gr.Dropdown
    search: gr.Textbox
    log: gr.Textbox
    resources: gr.Markdown
    # The step the gallery shows, kept on the server: the slider is only its widget. Streams read this state,
    # never the slider, because the slider's value can be momentarily empty in the browser while its range
    # is being updated by a frame.
    scrub_step: gr.State

    @property
    def stream_outputs(self) -> list:
        return [self.status, self.progress, self.loss_plot, self.lr_plot, self.eval_plot, self.grad_plot,
                self.gallery, self.scrub, self.log, self.resources]

    @property
    def view_options(self) -> list:
        return [self.smoothing, self.log_y, self.level, self.search, self.scrub_step]

    @property
    def scrub_reset(self) -> list:
        """Outputs that put the step slider back to "every step" (give each the value 0)."""
        return [self.scrub, self.scrub_step]


@dataclass
class StreamTokens:
    """The newest stream of each browser session; older ones end when they see they were replaced."""

    counter: itertools.count = field(default_factory=itertools.count)
    current: dict[str, int] = field(default_factory=dict)

    def claim(self, session: str) -> int:
        token = next(self.counter)
        self.current[session] = token
        return token

    def is_current(self, session: str, token: int) -> bool:
        return self.current.get(session) == token


@dataclass
class MonitorLink:
    """What another tab needs to hand a run to the live monitor: select it, switch tabs, stream it."""

    current_run: gr.State
    tabs: gr.Tabs
    tab_id: str
    handles: MonitorHandles
    tokens: StreamTokens

    @property
    def outputs(self) -> list:
        """Outputs of :meth:`show`."""
        return [self.current_run, self.tabs, self.handles.picker, *self.handles.scrub_reset]

    def show(self, services: Services, run_id: str) -> tuple:
        """Updates that select ``run_id`` in the monitor and switch to its tab."""
        return (run_id, gr.Tabs(selected=self.tab_id), gr.Dropdown(choices=run_choices(services), value=run_id),
                0, 0)

    def stream(self, services: Services) -> dict:
        """Keyword arguments of the ``.then``/``.success`` event that streams the selected run."""
        return stream_event(services, self.tokens, self.current_run, self.handles)


def run_label(info: RunInfo) -> str:
    return f"{info.run_id} · {info.name} · {info.status}"


def run_choices(services: Services) -> list[tuple[str, str]]:
    return [(run_label(r), r.run_id) for r in services.manager.runs()]


def render(services: Services) -> MonitorHandles:
    with gr.Row():
        picker = gr.Dropdown(label="Run", choices=[], value=None, scale=4, elem_id="monitor-run")
        refresh = gr.Button("↻ Refresh list", scale=1, size="sm")
        attach = gr.Button("Attach", scale=1, size="sm", elem_id="monitor-attach")
    with gr.Row():
        stop = gr.Button("■ Stop", variant="stop", size="sm", elem_id="monitor-stop")
        save_now = gr.Button("Save now", size="sm", elem_id="monitor-save")
        sample_now = gr.Button("Sample now", size="sm", elem_id="monitor-sample")
    status = gr.Markdown(view.status_markdown(view.MonitorState(), None), elem_id="dp-status")
    progress = gr.HTML(view.progress_html(view.MonitorState()), elem_id="monitor-progress")
    message = gr.Markdown("", elem_id="monitor-message")
    with gr.Row():
        smoothing = gr.Slider(0.0, 0.99, value=0.9, step=0.01, label="Loss smoothing (EMA)")
        log_y = gr.Checkbox(label="Log-scale loss", value=False)
    with gr.Row():
        loss_plot = gr.Plot(label="Loss", elem_id="monitor-loss")
        lr_plot = gr.Plot(label="Learning rate", elem_id="monitor-lr")
    with gr.Row():  # shown once the run reports eval losses / gradient norms
        eval_plot = gr.Plot(label="Eval loss", visible=False, elem_id="monitor-eval")
        grad_plot = gr.Plot(label="Gradient norm", visible=False, elem_id="monitor-grad")
    scrub = gr.Slider(0, 1, value=0, step=1, label="Samples at step (0 = every step, newest first)",
                      elem_id="monitor-scrub")
    gallery = gr.Gallery(label=view.gallery_label(view.MonitorState()), columns=4, height=360,
                         elem_id="monitor-samples", format="png")
    with gr.Row():
        level = gr.Dropdown(list(view.LEVELS), value="info", label="Log level", scale=1)
        search = gr.Textbox(label="Search the log", placeholder="text, then Enter", scale=3,
                            elem_id="monitor-search")
    log = gr.Textbox(label="Log", lines=12, max_lines=12, autoscroll=True, interactive=False, elem_id="monitor-log")
    resources = gr.Markdown("", elem_id="monitor-resources")
    return MonitorHandles(picker, refresh, attach, stop, save_now, sample_now, status, progress, message,
                          smoothing, log_y, loss_plot, lr_plot, eval_plot, grad_plot, gallery, scrub, level,
                          search, log, resources, gr.State(0))


def stream(services: Services, run_id: str | None, options: tuple, still_wanted=lambda: True) -> Iterator[tuple]:
    """Yield the monitor's outputs after every batch of new events until the run ends (or a newer stream
    replaces this one). ``options`` = (smoothing, log_y, level, query, scrub step)."""
    state = view.MonitorState()
    if not run_id:
        yield _frame(state, None, options, "")
        return
    roots = services.manager.roots
    res_text, res_at, drawn_at, dirty = "", 0.0, 0.0, False
    sent: dict = {}  # what this stream has sent: unchanged outputs are skipped
    try:
        run_dir = services.manager.run_dir(run_id)
        for batch in services.manager.event_batches(run_id, heartbeat_s=HEARTBEAT_S):
            if not still_wanted():
                return
            view.fold(batch, run_dir, state)
            dirty = dirty or bool(batch)
            now = time.monotonic()
            if now - res_at >= RESOURCES_EVERY_S:
                res_text, res_at, dirty = view.resources_markdown(snapshot(run_dir)), now, True
            # Frames are throttled: a fast trainer must not flood a slow browser with redraws.
            if dirty and now - drawn_at >= MIN_FRAME_S:
                drawn_at, dirty = now, False
                yield _frame(state, run_id, options, res_text, sent, roots)
    except RunError as exc:
        state.logs.append(f"[ERROR] {exc}")
    yield _frame(state, run_id, options, res_text, sent, roots)


def _frame(state: view.MonitorState, run_id: str | None, options: tuple, res_text: str,
           sent: dict | None = None, roots: list | tuple = ()) -> tuple:
    """The monitor's outputs for ``state``. With ``sent`` (what this stream last sent, kept by the caller),
    an output whose content has not changed since is ``gr.skip()``: the gallery (every image path goes
    through Gradio's file cache each time it is sent), the slider's range and hidden charts are rebuilt
    only when they change, and the charts only when there are new points."""
    smoothing, log_y, level, query, scrub = options

    def changed(key: str, signature) -> bool:
        if sent is None:
            return True
        if sent.get(key, _UNSENT) == signature:
            return False
        sent[key] = signature
        return True

    points = (len(state.steps), state.steps[-1] if state.steps else None)
    evals = sum(len(v) for v in state.evals.values()) if view.has_evals(state) else 0
    items = view.gallery_items(state, scrub)
    label = view.gallery_label(state, scrub)
    maximum = view.scrub_maximum(state)
    skip = gr.skip()
    return (view.status_markdown(state, run_id), view.progress_html(state),
            view.loss_figure(state, smoothing, log_y) if changed("loss", (points, smoothing, log_y)) else skip,
            view.lr_figure(state) if changed("lr", points) else skip,
            # Hidden charts cost nothing: a figure is only built when there is something to draw.
            (gr.Plot(view.eval_figure(state), visible=True) if evals else gr.Plot(visible=False))
            if changed("eval", evals) else skip,
            (gr.Plot(view.grad_norm_figure(state), visible=True) if state.grad_norms else gr.Plot(visible=False))
            if changed("grad", len(state.grad_norms)) else skip,
            # Only the shown previews are served (studio/served.py), never their run folder.
            gr.Gallery(served.publish_items(items, roots), label=label) if changed("gallery", (items, label))
            else skip,
            # Only the range: the value stays the user's.
            gr.Slider(maximum=maximum) if changed("scrub", maximum) else skip,
            view.log_text(state, level=level, query=query or ""), res_text)


_UNSENT = object()


def view_options(smoothing, log_y, level, query, scrub) -> tuple:
    """The view options as the stream uses them, whatever the browser sent: a widget whose value is
    momentarily empty (or out of range) falls back to its default instead of failing the stream."""

    def number(value, default: float, low: float, high: float) -> float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return default
        return min(max(value, low), high) if value == value else default  # NaN -> default

    return (number(smoothing, 0.9, 0.0, 0.99), bool(log_y), level if level in view.LEVELS else "info",
            query if isinstance(query, str) else "", int(number(scrub, 0, 0, float("inf"))))


def step_choice(value) -> int:
    """The slider's value as the step to show (0 = every step); an empty value keeps "every step"."""
    return view_options(None, False, None, None, value)[4]


def streamer(services: Services, tokens: StreamTokens):
    """The generator callback streaming one run into the monitor's outputs (shared with the wizard). Its
    events run with ``preprocess=False`` (see :func:`stream_event`): raw widget values go through
    :func:`view_options`, so an empty widget value never fails the stream."""

    def do_stream(run_id, smoothing, log_y, level, query, scrub, request: gr.Request):
        session = getattr(request, "session_hash", None) or "anonymous"
        token = tokens.claim(session)
        yield from stream(services, run_id, view_options(smoothing, log_y, level, query, scrub),
                          still_wanted=lambda: tokens.is_current(session, token))

    return do_stream


def stream_event(services: Services, tokens: StreamTokens, current_run: gr.State, h: MonitorHandles) -> dict:
    """Keyword arguments of an event (or ``.then``) that streams the selected run into the monitor."""
    return dict(fn=streamer(services, tokens), inputs=[current_run, *h.view_options], outputs=h.stream_outputs,
                concurrency_limit=None, preprocess=False, api_visibility="private")


def _default_run(services: Services) -> str | None:
    runs = services.manager.runs()
    pick = [r for r in runs if r.live] or runs
    return pick[0].run_id if pick else None


BACKEND_LIMITS = {
    "diffusion-pipe": {"save": "diffusion-pipe's `save` writes a training-state checkpoint, not a LoRA",
                       "sample": "diffusion-pipe cannot render samples while training: use the runs "
                                 "library's sidecar sampling on a saved epoch"},
}


def command_buttons(services: Services, run_id: str | None):
    """Save now / Sample now, disabled with the reason when the run's backend cannot do it."""
    backend = ""
    if run_id:
        try:
            backend = services.manager.info(run_id).backend
        except RunError:
            backend = ""
    limits = BACKEND_LIMITS.get(backend, {})
    save = gr.Button(value="Save now (checkpoint only)" if "save" in limits else "Save now",
                     interactive=bool(run_id))
    sample = gr.Button(interactive=bool(run_id) and "sample" not in limits,
                       value="Sample now (not available)" if "sample" in limits else "Sample now")
    note = " · ".join(f"ℹ {text}" for text in limits.values())
    return save, sample, note


def _commander(services: Services, command: Command, done: str):
    def send(run_id):
        if not run_id:
            return "No run attached: pick one in the list first."
        try:
            services.manager.send(run_id, command)
        except RunError as exc:
            return f"⚠ {exc}"
        return done

    return send


def wire(h: MonitorHandles, services: Services, current_run: gr.State, demo: gr.Blocks,
         tokens: StreamTokens) -> None:
    def on_load():
        run_id = _default_run(services)
        return gr.Dropdown(choices=run_choices(services), value=run_id), run_id

    stream_ev = stream_event(services, tokens, current_run, h)
    h.refresh.click(lambda r: gr.Dropdown(choices=run_choices(services), value=r), inputs=current_run,
                    outputs=h.picker)
    # Another run: the step slider starts again at "every step".
    attach_ev = gr.on([h.attach.click, h.picker.input], lambda r: (r, 0, 0), inputs=h.picker,
                      outputs=[current_run, *h.scrub_reset])
    attach_ev.then(**stream_ev)
    gr.on([h.smoothing.release, h.log_y.input, h.level.input, h.search.submit], **stream_ev)
    h.scrub.release(step_choice, inputs=h.scrub, outputs=h.scrub_step, preprocess=False,
                    api_visibility="private").then(**stream_ev)
    demo.load(on_load, outputs=[h.picker, current_run]).then(**stream_ev)
    current_run.change(lambda r: command_buttons(services, r), inputs=current_run,
                       outputs=[h.save_now, h.sample_now, h.message])
    h.stop.click(_commander(services, Command.STOP, "Stop requested: the trainer saves its LoRA and stops "
                            "at the next step."), inputs=current_run, outputs=h.message)
    h.save_now.click(_commander(services, Command.SAVE, "Save requested: a LoRA is written at the next step."),
                     inputs=current_run, outputs=h.message)
    h.sample_now.click(_commander(services, Command.SAMPLE, "Sample requested: previews render at the next "
                                  "step."), inputs=current_run, outputs=h.message)
