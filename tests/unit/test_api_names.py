"""API hygiene: only events given an api_name are public; the page's plumbing is private; docs/api.md shows a
gradio_client example for every public endpoint and for nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pytest

import studio
from studio import api
from studio.services import Services
from tests.conftest import write_pair
from trainers.runs import RunManager

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_unnamed_events_become_private_and_named_ones_stay_public():
    with gr.Blocks() as demo:
        named = api.record_explicit_names(demo)
        box = gr.Textbox()
        button = gr.Button()

        def plumbing(text):
            return text

        def shown(text):
            return text

        button.click(plumbing, box, box)
        box.submit(shown, box, box, api_name="shown")
        def typed(x: str) -> str:
            return x

        gr.api(typed, api_name="typed")
    assert api.hide_unnamed(demo, named) == ["shown", "typed"]
    assert {fn.api_name: fn.api_visibility for fn in demo.fns.values()}["plumbing"] == "private"
    with gr.Blocks() as later:  # recording stopped: a second page starts its own record
        gr.Button().click(lambda: None, None, None)
    assert api.public_endpoints(later) == ["lambda"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    services = Services(manager=RunManager([tmp / "runs"]), demo_main=write_pair(tmp / "demo"), allowed_roots=[tmp])
    return studio.build_app(services)


def test_the_page_publishes_only_named_endpoints(page):
    public = api.public_endpoints(page)
    assert {"start_run", "watch_events", "export_workflow", "validate_config"} <= set(public)
    names = {fn.api_name for fn in page.fns.values()}
    assert {"refresh_picker", "refresh_all"} <= names  # plumbing exists under gradio's automatic names ...
    assert not {"refresh_picker", "refresh_all"} & set(public)  # ... and is not an endpoint
    assert not any(name.startswith(("lambda", "unnamed", "fn")) for name in public)


def test_docs_show_a_client_example_for_every_public_endpoint(page):
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r'api_name="/(\w+)"', text))
    assert documented == set(api.public_endpoints(page))
