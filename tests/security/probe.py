"""Call the studio's endpoints the way a hostile caller would, in-process: every named endpoint of the built
page, each string argument replaced by a probe, the studio's own errors (gr.Error) expected and nothing else."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

MAX_ITEMS = 20  # a generator endpoint is read this far


@dataclass
class Outcome:
    calls: int = 0
    crashes: list[str] = field(default_factory=list)  # "endpoint(args): ExceptionType: message"
    outputs: list[str] = field(default_factory=list)  # repr of every result, to search for leaked decoy data


def named_endpoints(blocks: gr.Blocks) -> dict[str, object]:
    """Every endpoint a client can call by name (``api_visibility`` other than private), and the page's plumbing
    that studio.api.hide_unnamed made private (a browser still calls it by index), by api name."""
    return {fn.api_name: fn for fn in blocks.fns.values()
            if fn.fn is not None and isinstance(fn.api_name, str)
            and (fn.api_visibility != "private" or getattr(fn, "studio_plumbing", False))}


def _request(remote: bool) -> gr.Request:
    host = "203.0.113.9" if remote else "127.0.0.1"
    return gr.Request(username=None, session_hash="probe", client=SimpleNamespace(host=host, port=1), headers={})


def _arguments(block_fn) -> tuple[list, list[int], str | None]:
    """Default arguments (components' values, else the signature's defaults), which positions take text,
    and the name of a gr.Request parameter."""
    try:
        params = list(inspect.signature(block_fn.fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    request = next((p.name for p in params if p.annotation in (gr.Request, "gr.Request")), None)
    args, text = [], []
    for index, component in enumerate(block_fn.inputs):
        value = getattr(component, "value", None)
        param = params[index] if index < len(params) and params[index].kind != params[index].VAR_POSITIONAL else None
        if param is not None and param.default is not inspect.Parameter.empty:
            value = param.default
        args.append(value)
        annotation = str(param.annotation) if param is not None else ""
        if isinstance(component, (gr.Textbox, gr.Dropdown, gr.Code, gr.Radio, gr.State)) or "str" in annotation \
                or value is None or isinstance(value, str):
            text.append(index)
    return args, text, request


def call(name: str, block_fn, args: list, request: str | None, outcome: Outcome, remote: bool = False) -> None:
    kwargs = {request: _request(remote)} if request else {}
    outcome.calls += 1
    try:
        result = block_fn.fn(*args, **kwargs)
        if inspect.isgenerator(result):
            result = list(itertools.islice(result, MAX_ITEMS))
        outcome.outputs.append(repr(result))
    except gr.Error as exc:
        outcome.outputs.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - any other exception is what the test looks for
        outcome.crashes.append(f"{name}{tuple(args)!r:.200}: {type(exc).__name__}: {exc}"[:400])


def probe(endpoints: dict[str, object], values: Iterable[str], outcome: Outcome, *, remote: bool = False,
          fill: str | None = None) -> Outcome:
    """Each endpoint with each value in every text position (others at their defaults; or empty ones set to
    ``fill``, a valid run id), in all text positions at once, and with the value's last part in the others
    (``delete_run('../x', confirm='x')``)."""
    values = list(values)
    for name, block_fn in endpoints.items():
        defaults, text, request = _arguments(block_fn)
        for value in values:
            last = Path(value.replace("\x00", "")).name if value else value
            variants = [[value if i in text else a for i, a in enumerate(defaults)]]
            for position in text:
                if fill is not None:  # the other run ids / names valid, so the probed argument is reached
                    variants.append([value if i == position else (fill if i in text and a in (None, "") else a)
                                     for i, a in enumerate(defaults)])
                variants.append([value if i == position else (last if i in text else a)
                                 for i, a in enumerate(defaults)])
            for args in variants:
                call(name, block_fn, args, request, outcome, remote)
    return outcome
