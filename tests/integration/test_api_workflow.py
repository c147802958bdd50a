"""Through gradio_client: the ComfyUI workflow of an exported LoRA downloads as a file, and the page's plumbing
(events without an api_name) is neither listed nor callable by a client."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from gradio_client import Client

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve
from trainers import run_library
from trainers.runs import RunManager


@pytest.fixture
def served_run(tmp_path, monkeypatch):
    manager = RunManager([tmp_path / "runs"], trainer_module="tests.fakes.trainer")
    run_id = manager.start(write_pair(tmp_path / "p", max_steps=3))
    list(manager.events(run_id))
    while manager.info(run_id).live:
        time.sleep(0.05)
    run_dir = manager.run_dir(run_id)
    (run_dir / "epoch1").mkdir(exist_ok=True)
    (run_dir / "epoch1" / "adapter_model.safetensors").write_bytes(b"")
    (run_dir / manager.info(run_id).meta["main_config"]).write_text(
        "[model]\ntype = 'chroma'\ntransformer_path = 'models/chroma-v50.safetensors'\ntransformer_dtype = 'float8'\n"
        "[studio]\nsample_prompts = ['a zxq fox', 'a cat']\nsample_seeds = [1, 2]\nsample_steps = 26\n",
        encoding="utf-8")

    def fake_export(info, folder, layout, python=None):  # the conversion needs torch; tested in test_native_export
        out = info.run_dir / "exports" / f"{info.run_id}_{folder}_{layout}.safetensors"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(b"lora")
        return out

    monkeypatch.setattr(run_library, "export_lora", fake_export)
    blocks, url = serve(Services(manager=manager, demo_main=tmp_path / "p" / "main.toml", allowed_roots=[tmp_path]))
    yield Client(url, verbose=False, download_files=str(tmp_path / "downloads")), run_id
    blocks.close()


def test_export_workflow_downloads_the_comfyui_graph(served_run):
    client, run_id = served_run
    path = Path(client.predict(run_id, "epoch1", api_name="/export_workflow"))
    graph = json.loads(path.read_text(encoding="utf-8"))
    by_class: dict[str, list[dict]] = {}
    for node in graph.values():
        by_class.setdefault(node["class_type"], []).append(node["inputs"])
    assert by_class["LoraLoaderModelOnly"][0]["lora_name"] == f"{run_id}_epoch1_comfyui.safetensors"
    assert by_class["UNETLoader"][0] == {"unet_name": "chroma-v50.safetensors", "weight_dtype": "fp8_e4m3fn"}
    assert sorted(s["seed"] for s in by_class["KSampler"]) == [1, 1, 2, 2]
    assert {s["steps"] for s in by_class["KSampler"]} == {26}


def test_plumbing_is_not_an_endpoint(served_run):
    client, _ = served_run
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/export_workflow" in named and "/start_run" in named
    assert not any(name.startswith(("/refresh", "/lambda")) for name in named)
    with pytest.raises(ValueError):
        client.predict(api_name="/refresh_all")
