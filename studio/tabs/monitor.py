"""Live monitor: attach to a run and stream its progress, charts, samples, log and resources into the page.

The stream is a generator callback over ``RunManager.event_batches``: the trainer runs in its own process
and the handler only reads the run folder, so a page reload simply attaches again from the start. Changing
a view option re-attaches too (re-reading a run folder is cheap); each browser session has one live stream,
and an older one notices at its next heartbeat that it was replaced and ends.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import gradio as gr

from studio import served, view
from studio.services import Services
from trainers.commands import Command
from trainers.resources import snapshot
from trainers.runs import RunError, RunInfo

POLL_S = 0.2  # how often a stream looks at its session's view request (controls act within this)
RESOURCES_EVERY_S = 2.0
MIN_FRAME_S = 1.0  # new events redraw the text outputs at most this often
HEAVY_EVERY_S = 5.0  # and the charts and the sample gallery at most this often (each redraw of a plotly chart
# costs the browser's main thread about a tenth of a second; a changed view option redraws them at once)
MAX_SESSIONS = 1000


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

    @property
    def stream_outputs(self) -> list:
        return [self.status, self.progress, self.loss_plot, self.lr_plot, self.eval_plot, self.grad_plot,
                self.gallery, self.scrub, self.log, self.resources]

    @property
    def scrub_reset(self) -> list:
        """Outputs that put the step slider back to "every step" (give each the value 0). The step the gallery
        shows lives on the server (``MonitorViews``); the slider is only its widget."""
        return [self.scrub]


@dataclass
class ViewRequest:
    """What one browser session wants the monitor to show: the run and the view options."""

    run_id: str | None = None
    smoothing: float = 0.9
    log_y: bool = False
    level: str = "info"
    query: str = ""
    scrub: int = 0
    version: int = 0  # bumped by every change: the stream redraws when it sees a new one
    redraw: int = 0  # bumped when the tab is shown: the stream sends every output again (a chart drawn while its
    # tab was hidden has no size in the browser, and unchanged outputs are otherwise skipped)

    @property
    def options(self) -> tuple:
        return self.smoothing, self.log_y, self.level, self.query, self.scrub


@dataclass
class MonitorViews:
    """Per browser session: what the monitor shows, and which stream is the session's current one.

    Controls write here and return at once; the session's one stream reads it several times a second. (A
    control bound to a new stream would be ignored while the previous stream still runs: Gradio drops a
    trigger of a listener whose last call is pending, and a stream is pending for as long as its run.)
    """

    counter: itertools.count = field(default_factory=itertools.count)
    current: dict[str, int] = field(default_factory=dict)
    views: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, session: str) -> int:
        token = next(self.counter)
        with self.lock:
            self.current[session] = token
        return token

    def is_current(self, session: str, token: int) -> bool:
        return self.current.get(session) == token

    def get(self, session: str) -> ViewRequest:
        with self.lock:
            return replace(self.views.get(session) or ViewRequest())

    def update(self, session: str, **changes) -> ViewRequest:
        """Change what ``session`` sees; a new run starts at "every step" of the sample gallery."""
        with self.lock:
            old = self.views.pop(session, None) or ViewRequest()
            if "run_id" in changes and changes["run_id"] != old.run_id:
                changes.setdefault("scrub", 0)
            new = replace(old, **changes, version=old.version + 1)
            self.views[session] = new
            while len(self.views) > MAX_SESSIONS:  # sessions of closed tabs: drop the oldest
                self.views.popitem(last=False)
            return replace(new)

    def release(self, session: str, token: int) -> None:
        """The session's stream ended: forget the session unless a newer stream took it over."""
        with self.lock:
            if self.current.get(session) == token:
                self.current.pop(session, None)


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


@dataclass
class MonitorLink:
    """What another tab needs to hand a run to the live monitor: select it, switch tabs, stream it."""

    current_run: gr.State
    tabs: gr.Tabs
    tab_id: str
    handles: MonitorHandles
    tokens: MonitorViews

    @property
    def outputs(self) -> list:
        """Outputs of :meth:`show`."""
        return [self.current_run, self.tabs, self.handles.picker, *self.handles.scrub_reset]

    def show(self, services: Services, run_id: str) -> tuple:
        """Updates that select ``run_id`` in the monitor and switch to its tab."""
        return (run_id, gr.Tabs(selected=self.tab_id), gr.Dropdown(choices=run_choices(services), value=run_id), 0)

    def stream(self, services: Services) -> dict:
        """Keyword arguments of the ``.then``/``.success`` event that streams the selected run."""
        return stream_event(services, self.tokens, self.current_run, self.handles)


def run_label(info: RunInfo) -> str:
    """The picker's label: id and name only. (A status in it would be the one at the last refresh: a run picked
    as "running" stays labelled so after Stop; the status line under the picker is the live one.)"""
    return f"{info.run_id} · {info.name}"


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
        level = gr.Dropdown(list(view.LEVELS), value="info", label="Log level", scale=1, elem_id="monitor-level")
        search = gr.Textbox(label="Search the log", placeholder="text, then Enter", scale=3,
                            elem_id="monitor-search")
    log = gr.Textbox(label="Log", lines=12, max_lines=12, autoscroll=True, interactive=False, elem_id="monitor-log")
    resources = gr.Markdown("", elem_id="monitor-resources")
    return MonitorHandles(picker, refresh, attach, stop, save_now, sample_now, status, progress, message,
                          smoothing, log_y, loss_plot, lr_plot, eval_plot, grad_plot, gallery, scrub, level,
                          search, log, resources)


def stream(services: Services, views: MonitorViews, session: str,
           still_wanted=lambda: True) -> Iterator[tuple]:
    """Yield the monitor's outputs for what ``session`` asks to see (``views``), as long as it is wanted:
    a new frame after new events (throttled), and at once after any change of run or view option."""
    while still_wanted():
        yield from _stream_run(services, views, session, views.get(session).run_id, still_wanted)


def _stream_run(services: Services, views: MonitorViews, session: str, run_id: str | None,
                still_wanted) -> Iterator[tuple]:
    """Frames of one run until the session asks for another run (or the stream is no longer wanted)."""
    state, sent = view.MonitorState(), {}  # sent: what this stream has sent, unchanged outputs are skipped
    res_text, res_at, drawn_at, heavy_at, dirty, shown = "", 0.0, 0.0, 0.0, False, -1
    redrawn = views.get(session).redraw
    for batch in _batches(services, run_id, state):
        request = views.get(session)
        if not still_wanted() or request.run_id != run_id:
            return
        if request.redraw != redrawn:
            sent.clear()
            redrawn = request.redraw
        if batch:
            view.fold(batch, services.manager.run_dir(run_id), state)
            dirty = True
        now = time.monotonic()
        if run_id and now - res_at >= RESOURCES_EVERY_S:
            res_text, res_at, dirty = view.resources_markdown(snapshot(services.manager.run_dir(run_id))), now, True
        # A changed view option redraws at once; new events are throttled, so that a fast trainer does not
        # flood a slow browser with redraws.
        asked = request.version != shown
        if asked or (dirty and now - drawn_at >= MIN_FRAME_S):
            heavy = asked or now - heavy_at >= HEAVY_EVERY_S or not state.steps
            # Without the heavy outputs this frame stays dirty: the charts and gallery still owe its news.
            shown, drawn_at, dirty = request.version, now, not heavy
            heavy_at = now if heavy else heavy_at
            frame = _frame(state, run_id, request.options, res_text, sent, services.manager.roots, heavy=heavy)
            if any(out != gr.skip() for out in frame):
                yield frame


def _batches(services: Services, run_id: str | None, state: view.MonitorState) -> Iterator[list]:
    """The run's event batches (an empty one every ``POLL_S`` of silence), then empty batches forever: a
    finished run's view still answers its controls."""
    if run_id:
        try:
            yield from services.manager.event_batches(run_id, heartbeat_s=POLL_S)
        except RunError as exc:
            state.logs.append(f"[ERROR] {exc}")
    while True:
        yield []
        time.sleep(POLL_S)


def _frame(state: view.MonitorState, run_id: str | None, options: tuple, res_text: str,
           sent: dict | None = None, roots: list | tuple = (), heavy: bool = True) -> tuple:
    """The monitor's outputs for ``state``. With ``sent`` (what this stream last sent, kept by the caller),
    an output whose content has not changed since is ``gr.skip()``: the browser redraws nothing it already
    shows (the gallery's image paths also go through Gradio's file cache each time it is sent). Without
    ``heavy`` the charts, gallery and slider wait for a later frame."""
    smoothing, log_y, level, query, scrub = options

    def changed(key: str, signature, costly: bool = False) -> bool:
        if sent is None:
            return True
        if sent.get(key, _UNSENT) == signature or (costly and not heavy):
            return False
        sent[key] = signature
        return True

    points = (len(state.steps), state.steps[-1] if state.steps else None)
    evals = sum(len(v) for v in state.evals.values()) if view.has_evals(state) else 0
    items = view.gallery_items(state, scrub)
    label = view.gallery_label(state, scrub)
    maximum = view.scrub_maximum(state)
    skip = gr.skip()
    status, progress = view.status_markdown(state, run_id), view.progress_html(state)
    log = view.log_text(state, level=level, query=query or "")
    return (status if changed("status", status) else skip, progress if changed("progress", progress) else skip,
            view.loss_figure(state, smoothing, log_y) if changed("loss", (points, smoothing, log_y), True) else skip,
            view.lr_figure(state) if changed("lr", points, True) else skip,
            # Hidden charts cost nothing: a figure is only built when there is something to draw.
            (gr.Plot(view.eval_figure(state), visible=True) if evals else gr.Plot(visible=False))
            if changed("eval", evals, True) else skip,
            (gr.Plot(view.grad_norm_figure(state), visible=True) if state.grad_norms else gr.Plot(visible=False))
            if changed("grad", len(state.grad_norms), True) else skip,
            # Only the shown previews are served (studio/served.py), never their run folder.
            gr.Gallery(served.publish_items(items, roots), label=label) if changed("gallery", (items, label), True)
            else skip,
            # Only the range: the value stays the user's.
            gr.Slider(maximum=maximum) if changed("scrub", maximum, True) else skip,
            log if changed("log", log) else skip, res_text if changed("resources", res_text) else skip)


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


def streamer(services: Services, views: MonitorViews):
    """The generator callback streaming into the monitor's outputs what the browser session asks to see (shared
    with the wizard and the runs library). The newest stream of a session replaces the older one."""

    def do_stream(run_id, request: gr.Request):
        session = session_of(request)
        if run_id and views.get(session).run_id != run_id:
            views.update(session, run_id=run_id)
        token = views.claim(session)
        try:
            yield from stream(services, views, session, still_wanted=lambda: views.is_current(session, token))
        finally:
            views.release(session, token)

    return do_stream


def stream_event(services: Services, views: MonitorViews, current_run: gr.State, h: MonitorHandles) -> dict:
    """Keyword arguments of an event (or ``.then``) that streams the selected run into the monitor. Streamed
    outputs show no progress animation: it would keep the browser busy for as long as the run streams."""
    return dict(fn=streamer(services, views), inputs=[current_run], outputs=h.stream_outputs,
                concurrency_limit=None, show_progress="hidden", api_visibility="private")


def view_setter(views: MonitorViews, name: str):
    """A control's handler: coerce the widget's value (see :func:`view_options`) and store it for the stream."""
    slot = ("smoothing", "log_y", "level", "query", "scrub").index(name)

    def set_option(value, request: gr.Request):
        raw = [None, False, None, None, None]
        raw[slot] = value
        views.update(session_of(request), **{name: view_options(*raw)[slot]})

    return set_option


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


def _commander(services: Services, views: MonitorViews, command: Command, done: str):
    """A command button's handler: it acts on the run the monitor shows to this session."""

    def send(request: gr.Request):
        run_id = views.get(session_of(request)).run_id
        if not run_id:
            return "No run attached: pick one in the list first."
        try:
            services.manager.send(run_id, command)
        except RunError as exc:
            return f"⚠ {exc}"
        what, detail = done.split(": ", 1)
        return f"{what} for run `{run_id}`: {detail}"

    return send


def wire(h: MonitorHandles, services: Services, current_run: gr.State, demo: gr.Blocks,
         views: MonitorViews, tab: gr.Tab | None = None) -> None:
    quick = {"queue": False, "show_progress": "hidden", "api_visibility": "private", "trigger_mode": "always_last"}

    def on_load(request: gr.Request):
        run_id = _default_run(services)
        views.update(session_of(request), run_id=run_id)
        return gr.Dropdown(choices=run_choices(services), value=run_id), run_id

    def on_pick(run_id, request: gr.Request):
        views.update(session_of(request), run_id=run_id or None)
        return run_id or None, 0

    def on_run_change(run_id, request: gr.Request):
        if views.get(session_of(request)).run_id != run_id:  # set by another tab (wizard, runs library)
            views.update(session_of(request), run_id=run_id)
        return command_buttons(services, run_id)

    def on_show(request: gr.Request):
        session = session_of(request)
        views.update(session, redraw=views.get(session).redraw + 1)

    if tab is not None:
        tab.select(on_show, **quick)
    h.refresh.click(lambda r: gr.Dropdown(choices=run_choices(services), value=r), inputs=current_run,
                    outputs=h.picker, api_visibility="private")
    # Another run, or the same one again: the session's stream switches within POLL_S; no new stream.
    gr.on([h.attach.click, h.picker.input], on_pick, inputs=h.picker,
          outputs=[current_run, *h.scrub_reset], **quick)
    for widget, event, name in ((h.smoothing, h.smoothing.release, "smoothing"), (h.log_y, h.log_y.input, "log_y"),
                                (h.level, h.level.input, "level"), (h.search, h.search.submit, "query"),
                                (h.scrub, h.scrub.release, "scrub")):
        event(view_setter(views, name), inputs=widget, preprocess=False, **quick)
    demo.load(on_load, outputs=[h.picker, current_run], api_visibility="private").then(
        **stream_event(services, views, current_run, h))
    current_run.change(on_run_change, inputs=current_run, outputs=[h.save_now, h.sample_now, h.message],
                       api_visibility="private")
    for button, command, done in (
            (h.stop, Command.STOP, "Stop requested: the trainer saves its LoRA and stops at the next step."),
            (h.save_now, Command.SAVE, "Save requested: a LoRA is written at the next step."),
            (h.sample_now, Command.SAMPLE, "Sample requested: previews render at the next step.")):
        button.click(_commander(services, views, command, done), outputs=h.message, api_visibility="private")
