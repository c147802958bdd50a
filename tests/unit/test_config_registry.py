"""The registry knows all 24 model types; each validates with its required keys and fails without each one;
form_fields lists only the keys a type reads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomlkit

from trainers.config import TYPE_NAMES, capabilities, form_fields, model_type, validate_texts
from trainers.config.model_keys import MODEL_KEYS
from trainers.config.native_support import NATIVE_TYPES

ISSUE_TYPES = ("sdxl flux ltx-video hunyuan-video cosmos lumina_2 wan chroma hidream sd3 cosmos_predict2 anima "
               "omnigen2 qwen_image hunyuan_image auraflow z_image hunyuan_video_15 flux2 ernie_image ltx2 "
               "ideogram4 krea2 minimax_h3").split()
SAMPLE_BY_KIND = {"file": "/m/weights.safetensors", "dir": "/m/folder", "path": "/m/thing", "dtype": "bfloat16",
                  "bool": True, "float": 1.0, "pos_float": 1.0, "fraction": 0.5, "int": 256,
                  "method": "logit_normal", "file_list": ["/m/a.safetensors"]}
DATASET = "resolutions = [512]\n[[directory]]\npath = '/d'\n"
DP = "diffusion-pipe"  # the diffusion-pipe contract, without the native trainer's refusals
if_video_dataset = "resolutions = [512]\nsize_buckets = [[960, 960, 1]]\n[[directory]]\npath = '/d'\n"


def _value(type_name: str, key: str):
    kind = MODEL_KEYS[key].kind
    if kind == "text_encoders":
        return [{"path": "/m/te.safetensors", "type": model_type(type_name).text_encoder_type or "x"}]
    return SAMPLE_BY_KIND[kind]


def _minimal_main(type_name: str, drop: str | None = None) -> str:
    info = model_type(type_name)
    model = {"type": type_name, "dtype": "bfloat16"}
    for key in (*info.required, *(info.alternatives[0] if info.alternatives else ())):
        model[key] = _value(type_name, key)
    model.pop(drop or "", None)
    doc = {"output_dir": "/runs", "dataset": "d.toml", "epochs": 1, "save_every_n_epochs": 1,
           "checkpoint_every_n_minutes": 60, "model": model, "adapter": {"type": "lora", "rank": 8},
           "optimizer": {"type": "adamw_optimi", "lr": 1e-4}}
    return tomlkit.dumps(doc)


def _dataset_for(type_name: str) -> str:
    return if_video_dataset if type_name == "cosmos" else DATASET


def test_registry_has_exactly_the_24_types() -> None:
    assert list(TYPE_NAMES) == ISSUE_TYPES


@pytest.mark.parametrize("type_name", ISSUE_TYPES)
def test_minimal_config_of_each_type_validates(type_name: str) -> None:
    issues = validate_texts(_minimal_main(type_name), _dataset_for(type_name), skip_path_checks=True, backend=DP)
    assert [i.format() for i in issues if i.is_error] == []


@pytest.mark.parametrize("type_name", ISSUE_TYPES)
def test_native_backend_trains_its_families_only(type_name: str) -> None:
    doc = tomlkit.parse(_minimal_main(type_name))
    doc["studio"] = {"backend": "native"}
    for text, backend in ((_minimal_main(type_name), "native"), (tomlkit.dumps(doc), None)):  # passed, and named
        issues = validate_texts(text, _dataset_for(type_name), skip_path_checks=True, backend=backend)
        errors = [i for i in issues if i.is_error]
        if type_name in NATIVE_TYPES:
            assert errors == [], [i.format() for i in errors]
        else:
            assert [i.key for i in errors] == ["model.type"], [i.format() for i in errors]
            assert "native trainer trains chroma, sdxl, flux, lumina_2, hidream, sd3 and qwen_image only" in errors[0].message
            assert errors[0].fix.startswith("set [studio] backend = 'diffusion-pipe'")
    doc["studio"] = {"backend": DP}
    assert [i for i in validate_texts(tomlkit.dumps(doc), _dataset_for(type_name), skip_path_checks=True)
            if i.is_error] == []
    # no backend anywhere, or 'auto': native for Chroma, diffusion-pipe for the rest; both validate clean
    doc["studio"] = {"backend": "auto"}
    for text in (_minimal_main(type_name), tomlkit.dumps(doc)):
        assert [i.format() for i in validate_texts(text, _dataset_for(type_name), skip_path_checks=True)
                if i.is_error] == []


@pytest.mark.parametrize(("type_name", "key"), [(t, k) for t in ISSUE_TYPES for k in model_type(t).required])
def test_each_required_model_key_is_enforced(type_name: str, key: str) -> None:
    issues = validate_texts(_minimal_main(type_name, drop=key), _dataset_for(type_name), skip_path_checks=True,
                            backend=DP)
    assert {i.key for i in issues if i.is_error} == {f"model.{key}"}


@pytest.mark.parametrize("type_name", [t for t in ISSUE_TYPES if model_type(t).alternatives])
def test_alternative_key_sets(type_name: str) -> None:
    info = model_type(type_name)
    for group in info.alternatives:
        doc = tomlkit.parse(_minimal_main(type_name))
        for key in info.alternatives[0]:
            del doc["model"][key]
        for key in group:
            doc["model"][key] = _value(type_name, key)
        issues = validate_texts(tomlkit.dumps(doc), _dataset_for(type_name), skip_path_checks=True, backend=DP)
        assert not [i for i in issues if i.is_error], group


def test_capabilities_match_the_notes() -> None:
    no_fft = {"hunyuan-video", "ltx-video", "sd3", "cosmos", "hidream", "omnigen2", "auraflow"}
    assert {t for t in ISSUE_TYPES if not model_type(t).full_finetune} == no_fft
    no_swap = {"sdxl", "ltx-video", "cosmos", "lumina_2", "sd3", "omnigen2"}
    assert {t for t in ISSUE_TYPES if not model_type(t).block_swap} == no_swap
    chroma = capabilities("chroma")
    assert chroma["block_swap_max"] == 34 and chroma["lora_file"] == "adapter_model.safetensors"
    assert capabilities("ltx2")["block_swap_max"] == 46 and capabilities("minimax_h3")["block_swap_max"] == 48
    assert capabilities("sdxl")["lora_format"] == "kohya" and not capabilities("sdxl")["lokr"]
    assert capabilities("flux")["lora_file"] == "pytorch_lora_weights.safetensors"
    assert capabilities("wan")["framerate"] == 16 and capabilities("ltx-video")["framerate"] == 25
    assert {t for t in ISSUE_TYPES if not model_type(t).fp8} == {"sdxl", "ltx-video", "cosmos", "lumina_2",
                                                                  "omnigen2"}


def test_key_of_another_type_is_a_warning_not_an_error() -> None:
    doc = tomlkit.parse(_minimal_main("chroma"))
    doc["model"]["guidance"] = 3.5  # read by flux, not chroma
    issues = validate_texts(tomlkit.dumps(doc), DATASET, skip_path_checks=True)
    assert [(i.key, i.severity) for i in issues] == [("model.guidance", "warning")]


def test_pytorch_optimizer_class_keys_are_accepted_with_a_warning() -> None:
    doc = tomlkit.parse(_minimal_main("chroma"))
    doc["optimizer"] = {"type": "Prodigy", "lr": 1.0, "d_coef": 2.0}
    issues = validate_texts(tomlkit.dumps(doc), DATASET, skip_path_checks=True)
    assert [(i.key, i.severity) for i in issues] == [("optimizer.type", "warning")]
    assert "d_coef" in issues[0].message


def test_form_fields_lists_only_the_keys_a_type_reads() -> None:
    chroma = {f.key: f for f in form_fields("chroma")}
    assert chroma["model.diffusers_path"].required and chroma["model.diffusers_path"].type == "dir"
    assert chroma["model.transformer_dtype"].choices and "float8" in chroma["model.transformer_dtype"].choices
    assert "model.ckpt_path" not in chroma and "monitoring.wandb_api_key" not in chroma
    assert "blocks_to_swap" in chroma and "adapter.fuse_adapters" in chroma
    assert "frame_buckets" not in chroma and "directory.control_path" not in chroma
    assert chroma["lr_scheduler"].choices == ("constant", "linear", "cosine")
    assert chroma["micro_batch_size_per_gpu"].type == "batch_size" and chroma["dataset"].type == "file"
    assert chroma["directory.path"].file == "dataset" and chroma["directory.path"].required
    assert all(f.description for f in chroma.values())
    sdxl = {f.key for f in form_fields("sdxl")}
    assert "blocks_to_swap" not in sdxl and "adapter.fuse_adapters" not in sdxl and "model.v_pred" in sdxl
    wan = {f.key for f in form_fields("wan")}
    assert {"frame_buckets", "video_clip_mode", "model.min_t"} <= wan
    assert "directory.control_path" in {f.key for f in form_fields("qwen_image")}
    with pytest.raises(KeyError):
        form_fields("nope")


def test_config_package_does_not_import_torch() -> None:
    code = ("import sys, trainers, trainers.config, trainers.profiles, trainers.config.cli_commands, trainers.cli; "
            "bad = [m for m in ('torch', 'diffusers', 'peft', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parse_main_gives_a_typed_config_with_defaults() -> None:
    from trainers.config import ConfigError, parse_dataset, parse_main

    doc = tomlkit.parse(_minimal_main("chroma"))
    doc["model"]["guidance"] = 3.5  # another type's key: dropped with a warning
    config = parse_main(tomlkit.dumps(doc))
    assert config.model.type == "chroma" and config.model.flux_shift is False
    assert config.micro_batch_size_per_gpu == 1 and config.adapter.rank == 8 and config.lr_scheduler == "constant"
    assert parse_dataset(DATASET).directory[0].num_repeats is None  # inherits the top level
    doc["epochs"] = 0
    with pytest.raises(ConfigError) as caught:
        parse_main(tomlkit.dumps(doc))
    assert [i.key for i in caught.value.issues if i.is_error] == ["epochs"]
