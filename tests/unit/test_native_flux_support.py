"""Flux in the torch-free registry: native on auto, its own [model] keys honoured, Kontext datasets refused with
the backend switch; the registry's native types are exactly the loop's families."""

from __future__ import annotations

import tomlkit

from trainers.config import native_support as ns
from trainers.config import validate_texts

FLUX_MAIN = """output_dir = '/runs'
dataset = 'd.toml'
epochs = 1
save_every_n_epochs = 1

[model]
type = 'flux'
diffusers_path = '/m/FLUX.1-dev'
dtype = 'bfloat16'
transformer_dtype = 'float8'
guidance = 1.0
bypass_guidance_embedding = false
flux_shift = true

[adapter]
type = 'lora'
rank = 8

[optimizer]
type = 'adamw_optimi'
lr = 1e-4
"""
DATASET = "resolutions = [512]\n[[directory]]\npath = '/d'\n"


def test_native_types_are_the_loops_families():
    from trainers.native.loop import FAMILIES

    assert set(ns.NATIVE_TYPES) == set(FAMILIES)


def test_flux_runs_natively_on_auto_and_validates_clean():
    main = tomlkit.parse(FLUX_MAIN).unwrap()
    assert ns.backend_of(main) == ns.NATIVE_BACKEND
    assert ns.native_findings(main, tomlkit.parse(DATASET).unwrap()) == []
    assert [i.format() for i in validate_texts(FLUX_MAIN, DATASET, skip_path_checks=True) if i.is_error] == []


def test_flux_keys_are_read_for_flux_only():
    main = tomlkit.parse(FLUX_MAIN).unwrap()
    main["model"]["type"] = "chroma"
    warned = {f.key for f in ns.native_findings(main) if f.severity == "warning"}
    assert {"model.guidance", "model.bypass_guidance_embedding"} <= warned


def test_kontext_control_path_trains_natively_for_flux_only():
    # diffusion-pipe utils/dataset.py:479 reads control_path for edit (Kontext) training, models/flux.py:381 uses it
    dataset = DATASET + "control_path = '/d/control'\n"
    assert [i for i in validate_texts(FLUX_MAIN, dataset, skip_path_checks=True) if i.is_error] == []
    assert ns.native_rejections(tomlkit.parse(FLUX_MAIN).unwrap(), tomlkit.parse(dataset).unwrap()) == []
    qwen = tomlkit.parse(FLUX_MAIN).unwrap()
    qwen["model"] = {"type": "qwen_image", "diffusers_path": "/m", "dtype": "bfloat16"}
    refused = ns.native_rejections(qwen, tomlkit.parse(dataset).unwrap())
    assert len(refused) == 1 and "directory[0].control_path" in refused[0]
    assert "type = 'flux'" in refused[0] and "backend = 'diffusion-pipe'" in refused[0]


def test_vram_counts_flux_as_the_real_model_is():
    # FLUX.1-dev's transformer (diffusers' defaults) on the meta device: no weights, exact parameter counts
    import accelerate
    import peft
    from diffusers import FluxTransformer2DModel

    from trainers.native.families.flux import lora_targets
    from trainers.vram import MODEL_PARAMS, VramSettings, estimate, lora_params

    with accelerate.init_empty_weights():
        model = FluxTransformer2DModel(guidance_embeds=True)
        total = sum(p.numel() for p in model.parameters())
        model.add_adapter(peft.LoraConfig(r=32, lora_alpha=32, target_modules=lora_targets(model)))
    assert lora_params(32, "flux") == sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert abs(MODEL_PARAMS["flux"] - total) / total < 0.01
    chroma, flux = (estimate(VramSettings(model=kind)).parts for kind in ("chroma", "flux"))
    assert flux["base weights"] > chroma["base weights"] and flux["optimizer state"] > chroma["optimizer state"]
