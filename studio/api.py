"""Named API endpoints (for ``gradio_client`` and scripts): start, watch, command, list and queue runs.

Each is a typed method registered with ``gr.api``; they call the same RunManager as the UI. Events
travel as their events.jsonl lines (see trainers/events.py; ``parse_event`` reads them back).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import gradio as gr

from studio.services import Services
from trainers.runs import RunError, RunInfo, RunManager


def _info_dict(info: RunInfo) -> dict:
    return {"run_id": info.run_id, "name": info.name, "backend": info.backend, "status": info.status,
            "created": info.created, "run_dir": str(info.run_dir)}


def _guard(fn: Callable) -> Callable:
    """Turn the studio's own errors into a gr.Error the client sees with its message."""

    @functools.wraps(fn)  # gr.api reads the signature and type hints through __wrapped__
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RunError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc

    return inner


class RunsApi:
    def __init__(self, manager: RunManager):
        self.manager = manager

    def start_run(self, main_toml: str, name: str = "", max_steps: int = 0) -> dict:
        """Start (or queue) a run of the main TOML at ``main_toml``; max_steps 0 keeps the config's."""
        run_id = self.manager.start(main_toml, name=name or None, max_steps=max_steps or None)
        return _info_dict(self.manager.info(run_id))

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


def register(services: Services) -> None:
    """Register the endpoints on the Blocks being built (call inside its ``with`` block)."""
    api = RunsApi(services.manager)
    for fn in (api.start_run, api.list_runs, api.run_info, api.send_command, api.cancel_queued):
        gr.api(_guard(fn), api_name=fn.__name__)
    gr.api(api.watch_events, api_name="watch_events", concurrency_limit=None)
