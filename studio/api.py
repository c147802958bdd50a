"""Named API endpoints (for ``gradio_client`` and scripts): start, watch, command, list and queue runs; the runs
library's diff, best save, export (and its ComfyUI workflow), LoRA key check, sidecar sampling, resume and delete.
Only events given an ``api_name`` are public: :func:`hide_unnamed` makes the page's own plumbing private.

Each is a typed method registered with ``gr.api``; they call the same RunManager as the UI. Events
travel as their events.jsonl lines (see trainers/events.py; ``parse_event`` reads them back). An export comes
back as a file the client downloads.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr

from studio import runs_view, served
from studio.services import Services
from trainers import run_library
from trainers.checkpoints import resume_points
from trainers.config.issues import ConfigParseError
from trainers.config.validate import validate_files
from trainers.runs import RunError, RunInfo, RunManager

# What a caller's bad input can raise in the studio: its own errors (ValueError covers PathRefused, ProfileError,
# ConfigParseError...), and the file system's refusals (a name too long, a folder where a file was meant).
STUDIO_ERRORS = (RunError, ValueError, KeyError, OSError)
MAX_MESSAGE = 4000


def _info_dict(info: RunInfo) -> dict:
    return {"run_id": info.run_id, "name": info.name, "backend": info.backend, "status": info.status,
            "created": info.created, "run_dir": str(info.run_dir)}


def _message(exc: Exception) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.strerror:  # the path in an OSError may be a caller's 5,000 characters
        name = str(exc.filename or "")
        text = f"{exc.strerror}: {name if len(name) <= 120 else name[:100] + '...'}"
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def _guard(fn: Callable) -> Callable:
    """Turn the studio's own errors into a gr.Error the client sees with its message (generators too)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:  # already worded for the user (and told whether to print)
                raise
            except STUDIO_ERRORS as exc:
                raise gr.Error(_message(exc)) from exc

        return stream

    @functools.wraps(fn)  # gr.api reads the signature and type hints through __wrapped__
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:  # already worded for the user (and told whether to print)
            raise
        except STUDIO_ERRORS as exc:
            raise gr.Error(_message(exc)) from exc

    return inner


def _file(path, roots) -> dict:
    """A file result gradio_client downloads: this one file is published (studio/served.py), no folder is."""
    shown = served.publish(path, roots)
    return {"path": str(shown), "orig_name": shown.name, "meta": {"_type": "gradio.FileData"}}


def check_config(main_toml: str) -> None:
    """RunError listing the errors of the config pair at ``main_toml`` (what ``dp-studio validate`` reports)."""
    if not isinstance(main_toml, str) or "\x00" in main_toml or not main_toml.strip():
        raise RunError(f"main_toml {main_toml!r} refused: give the path of a main TOML")
    try:
        issues = validate_files(Path(main_toml).expanduser())
    except ConfigParseError as exc:
        raise RunError(f"not started: {exc.format()}") from None
    errors = [issue.format() for issue in issues if issue.is_error]
    if errors:
        raise RunError("not started, the config has errors (fix them, or check with `dp-studio validate`):\n"
                       + "\n".join(errors))


class RunsApi:
    def __init__(self, manager: RunManager):
        self.manager = manager

    def start_run(self, main_toml: str, name: str = "", max_steps: int = 0) -> dict:
        """Start (or queue) a run of the main TOML at ``main_toml``; max_steps 0 keeps the config's. The pair is
        validated first, as ``dp-studio validate`` does: a config with errors is refused with their list. A W&B
        key found in the config goes into the secret store, never into the run folder (see ``notes``)."""
        check_config(main_toml)
        run_id = self.manager.start(main_toml, name=name or None, max_steps=max_steps or None)
        info = self.manager.info(run_id)
        return {**_info_dict(info), "notes": list(info.meta.get("notes", []))}

    def list_runs(self) -> list[dict]:
        """Every known run, newest first, with its status derived from its folder and pid."""
        return [_info_dict(r) for r in self.manager.runs()]

    def run_info(self, run_id: str) -> dict:
        """One run's status."""
        return _info_dict(self.manager.info(run_id))

    def send_command(self, run_id: str, command: str) -> str:
        """Send 'stop', 'save' or 'sample' to a running trainer (taken at its next step)."""
        self.manager.send(run_id, command)
        return f"{command} sent to {run_id}"

    def cancel_queued(self, run_id: str) -> str:
        """Take a queued run out of the queue."""
        self.manager.cancel(run_id)
        return f"{run_id} cancelled"

    def watch_events(self, run_id: str, since: int = 0) -> Iterator[list[str]]:
        """Stream the run's events from index ``since`` in batches until the run ends; each item is one
        events.jsonl line (JSON text: plain dicts holding a ``path`` would be taken for files by clients)."""
        seen = 0
        for batch in self.manager.event_batches(run_id):
            fresh = [ev.model_dump_json() for ev in batch[max(0, since - seen):]]
            seen += len(batch)
            if fresh:
                yield fresh

    def saved_folders(self, run_id: str) -> list[str]:
        """The run's saved LoRA folders (epochN / stepN, relative to the run folder), in training order."""
        info = self.manager.info(run_id)
        return run_library.saved_folders(info.run_dir, info.meta)

    def diff_runs(self, run_a: str, run_b: str) -> list[list[str]]:
        """Key-by-key config differences of two runs: [dotted key, value in A, value in B]."""
        a, b = self.manager.info(run_a), self.manager.info(run_b)
        return [list(row) for row in runs_view.config_diff(runs_view.run_config(a.run_dir, a.meta),
                                                           runs_view.run_config(b.run_dir, b.meta))]

    def mark_best(self, run_id: str, folder: str, note: str = "") -> str:
        """Record a saved folder as the run's best save."""
        run_library.mark_best(self.manager.info(run_id), folder, note)
        return f"{folder} is now the best save of {run_id}"

    def export_lora(self, run_id: str, folder: str, layout: str = "comfyui") -> dict:
        """Export a saved LoRA as 'comfyui', 'diffusers' or 'kohya'; the client receives the file."""
        return _file(run_library.export_lora(self.manager.info(run_id), folder, layout), self.manager.roots)

    def export_workflow(self, run_id: str, folder: str) -> dict:
        """Export a saved LoRA as 'comfyui' and write a ComfyUI API-format workflow for it (the run's base model,
        the LoRA, its sample prompts, seeds, size, steps and guidance); the client receives the workflow JSON,
        which names the LoRA file that export_lora(run_id, folder, 'comfyui') gives."""
        from trainers.comfyui_workflow import workflow_path, write_workflow

        info = self.manager.info(run_id)
        lora = run_library.export_lora(info, folder, "comfyui")
        return _file(write_workflow(info, lora, workflow_path(lora)), self.manager.roots)

    def check_lora(self, run_id: str, folder: str) -> dict:
        """Check a saved LoRA's keys and shapes against the run's base model (headers only): ``ok``, a one-line
        ``summary``, the lists of ``unmatched`` keys, ``mismatched`` shapes and ``half_pairs``, the coverage
        of the block Linears and a Markdown ``report``."""
        report = run_library.check_saved(self.manager.info(run_id), folder)
        return {"ok": report.ok, "summary": report.summary(), "layout": report.layout, "model": report.model,
                "exact": report.exact, "modules": report.modules, "covered": report.covered,
                "targets": report.targets, "ranks": report.ranks, "unmatched": report.unmatched,
                "mismatched": report.mismatched, "half_pairs": report.half_pairs, "not_lora": report.not_lora,
                "report": report.markdown()}

    def render_samples(self, run_id: str, folder: str, prompts: list[str] | None = None,
                       seeds: list[int] | None = None) -> Iterator[str]:
        """Render the run's [studio] prompts x seeds (or the given ones) with a saved LoRA folder, in a
        sidecar process; streams its progress lines. The images join the run's samples (source 'sidecar')."""
        yield from run_library.render_samples(self.manager.info(run_id), folder, prompts or [], seeds or [])

    def resume_points(self, run_id: str) -> list[dict]:
        """Where the run can be continued from, newest first. kind 'state': full training state, continues
        exactly; kind 'lora': weights only, a new run starts from them with a fresh optimizer and schedule."""
        return [{"name": p.name, "kind": p.kind, "step": p.step, "epoch": p.epoch, "time": p.time,
                 "label": p.label} for p in resume_points(self.manager.run_dir(run_id))]

    def resume_run(self, run_id: str, point: str) -> dict:
        """Continue the run from one of its resume points (a name from resume_points); returns the run that
        continues (the same one for a full state, a new one for a LoRA)."""
        return _info_dict(self.manager.info(self.manager.resume(run_id, point)))

    def delete_run(self, run_id: str, confirm: str) -> str:
        """Delete a finished run's folder; ``confirm`` must repeat the run id."""
        run_library.delete_run(self.manager.info(run_id), confirm)
        return f"deleted {run_id}"


# Serving limits (app.py and the test server use these). Gradio runs each step of a sync generator in a worker
# thread from one pool (``launch(max_threads=...)``, 40 by default), and a live stream (a ``watch_events`` client,
# a monitor tab) holds its thread while it waits for the next event: with the default, the 41st watcher of a run
# got no stream at all (its client timed out, then hung). ``STREAMS`` live streams fit next to the default pool
# of 40 for everything else; the queue itself is unbounded (a stream's event has no concurrency limit).
STREAMS = 100
MAX_THREADS = STREAMS + 40
QUEUE_SETTINGS = {"default_concurrency_limit": 4, "max_size": None}


def guard_all(blocks: gr.Blocks) -> None:
    """Every handler of the page (named endpoints and the page's own events alike: a browser can call both)
    answers bad input with a gr.Error naming the problem, never a traceback."""
    for block_fn in blocks.fns.values():
        if block_fn.fn is not None and not getattr(block_fn.fn, "_studio_guarded", False):
            block_fn.fn = _guard(block_fn.fn)
            block_fn.fn._studio_guarded = True


def record_explicit_names(blocks: gr.Blocks) -> set[int]:
    """Start noting which events of ``blocks`` their code names with an ``api_name`` (call before building the
    page); returns the set of their ids that :func:`hide_unnamed` keeps public. Gradio names every other event
    after its function, which would publish the page's plumbing as API endpoints."""
    config = blocks.default_config
    named: set[int] = set()
    original = config.set_event_trigger

    @functools.wraps(original)
    def recording(*args, **kwargs):
        dep, dep_index = original(*args, **kwargs)
        api_name = kwargs.get("api_name")
        if isinstance(api_name, str) and api_name.strip():
            named.add(dep._id)
        return dep, dep_index

    config.set_event_trigger = recording  # this page's config only; gradio itself is left as it is
    return named


def hide_unnamed(blocks: gr.Blocks, named: set[int]) -> list[str]:
    """Make every event of ``blocks`` that its code did not name private (not in the API page, not callable by
    client libraries; the page itself still runs it, so guard_all still covers it). Returns the public endpoint
    names, sorted."""
    config = blocks.default_config
    config.__dict__.pop("set_event_trigger", None)  # stop recording
    for block_fn in blocks.fns.values():
        if block_fn._id not in named and block_fn.api_visibility != "private":
            block_fn.api_visibility = "private"
            block_fn.studio_plumbing = True  # still callable by the page itself: tests/security probes these too
    return public_endpoints(blocks)


def public_endpoints(blocks: gr.Blocks) -> list[str]:
    """The endpoint names a client sees on the API page."""
    return sorted(fn.api_name for fn in blocks.fns.values()
                  if fn.fn is not None and fn.api_visibility == "public" and isinstance(fn.api_name, str))


def register(services: Services) -> None:
    """Register the endpoints on the Blocks being built (call inside its ``with`` block)."""
    api = RunsApi(services.manager)
    for fn in (api.start_run, api.list_runs, api.run_info, api.send_command, api.cancel_queued, api.saved_folders,
               api.diff_runs, api.mark_best, api.export_lora, api.export_workflow, api.check_lora,
               api.render_samples, api.resume_points, api.resume_run, api.delete_run):
        gr.api(_guard(fn), api_name=fn.__name__)
    gr.api(_guard(api.watch_events), api_name="watch_events", concurrency_limit=None)
