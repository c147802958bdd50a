"""The ComfyUI workflow export: every node's class and inputs match the node types ComfyUI ships, and every link
carries the type its input expects, so ComfyUI can queue the graph as it is."""

from __future__ import annotations

import pytest

from trainers.comfyui_workflow import SampleSettings, build_workflow, sample_settings
from trainers.runs import RunError

# ComfyUI's node definitions (INPUT_TYPES "required" and RETURN_TYPES), written from comfyanonymous/ComfyUI:
# nodes.py (UNETLoader, CLIPLoader, VAELoader, LoraLoaderModelOnly, CLIPTextEncode, KSampler, VAEDecode,
# SaveImage) and comfy_extras/nodes_sd3.py (EmptySD3LatentImage). Widget values are typed here by the Python
# type ComfyUI validates them against; linked inputs by the type of the output they take.
NODE_TYPES = {
    "UNETLoader": ({"unet_name": str, "weight_dtype": str}, ("MODEL",)),
    "CLIPLoader": ({"clip_name": str, "type": str}, ("CLIP",)),
    "VAELoader": ({"vae_name": str}, ("VAE",)),
    "LoraLoaderModelOnly": ({"model": "MODEL", "lora_name": str, "strength_model": float}, ("MODEL",)),
    "CLIPTextEncode": ({"text": str, "clip": "CLIP"}, ("CONDITIONING",)),
    "EmptySD3LatentImage": ({"width": int, "height": int, "batch_size": int}, ("LATENT",)),
    "KSampler": ({"model": "MODEL", "seed": int, "steps": int, "cfg": float, "sampler_name": str,
                  "scheduler": str, "positive": "CONDITIONING", "negative": "CONDITIONING",
                  "latent_image": "LATENT", "denoise": float}, ("LATENT",)),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": str}, ()),
}
# Choices of the combo widgets (nodes.py: UNETLoader weight_dtype, CLIPLoader type (holds "chroma"),
# comfy/samplers.py KSampler.SAMPLERS / SCHEDULERS).
COMBOS = {("UNETLoader", "weight_dtype"): {"default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"},
          ("CLIPLoader", "type"): {"chroma"}, ("KSampler", "sampler_name"): {"euler"},
          ("KSampler", "scheduler"): {"simple"}}

SETTINGS = SampleSettings(prompts=("a zxq fox", "a cat"), negative="blurry", seeds=(1, 2), width=768, height=1024,
                          steps=26, guidance=4.5)


def _check_graph(graph: dict) -> None:
    for node_id, node in graph.items():
        inputs, _ = NODE_TYPES[node["class_type"]]
        assert set(node["inputs"]) == set(inputs), (node_id, node["class_type"])
        for name, expected in inputs.items():
            value = node["inputs"][name]
            if isinstance(expected, str):  # a link: [source id, output index] of the right type
                source, index = value
                assert NODE_TYPES[graph[source]["class_type"]][1][index] == expected, (node_id, name)
            else:
                assert type(value) is expected, (node_id, name, value)
                allowed = COMBOS.get((node["class_type"], name))
                assert allowed is None or value in allowed, (node_id, name, value)


def test_every_node_and_link_matches_comfyui_node_types():
    graph = build_workflow(SETTINGS, unet="chroma-unlocked-v50.safetensors", lora="run_epoch3_comfyui.safetensors")
    _check_graph(graph)
    assert all(key.isdigit() for key in graph)


def test_one_sampler_per_prompt_and_seed_with_the_runs_settings():
    graph = build_workflow(SETTINGS, unet="chroma.safetensors", lora="lora.safetensors", weight_dtype="fp8_e4m3fn")
    samplers = [n["inputs"] for n in graph.values() if n["class_type"] == "KSampler"]
    assert [(graph[s["positive"][0]]["inputs"]["text"], s["seed"]) for s in samplers] == [
        ("a zxq fox", 1), ("a zxq fox", 2), ("a cat", 1), ("a cat", 2)]
    assert {(s["steps"], s["cfg"]) for s in samplers} == {(26, 4.5)}
    assert {graph[s["negative"][0]]["inputs"]["text"] for s in samplers} == {"blurry"}
    latent = next(n["inputs"] for n in graph.values() if n["class_type"] == "EmptySD3LatentImage")
    assert (latent["width"], latent["height"]) == (768, 1024)
    lora = next(n for n in graph.values() if n["class_type"] == "LoraLoaderModelOnly")
    assert lora["inputs"]["lora_name"] == "lora.safetensors"
    assert all(graph[s["model"][0]] is lora for s in samplers)  # the LoRA is on every sampler's model
    assert next(n for n in graph.values() if n["class_type"] == "CLIPLoader")["inputs"]["type"] == "chroma"
    assert sum(n["class_type"] == "SaveImage" for n in graph.values()) == 4


def test_sample_settings_default_like_the_native_previews():
    # trainers/native/settings.py StudioSettings: 20 steps, guidance 4.0, seed 42, size = first resolution
    got = sample_settings({"studio": {"sample_prompts": ["x"]}}, {"resolutions": [[640, 448]]})
    assert (got.steps, got.guidance, got.seeds, got.width, got.height) == (20, 4.0, (42,), 640, 640)


def test_other_model_types_are_refused_by_name():
    with pytest.raises(RunError, match="no ComfyUI workflow for model type 'sdxl'"):
        build_workflow(SETTINGS, unet="x", lora="y", family="sdxl")
