"""The wizard's model picker: Flux gets the same guided path as Chroma (its own file checks, the preset turned
into a Flux config that validates and trains natively, the VRAM estimate for Flux's size)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from studio import wizard_view as wv
from studio.wizard_models import CHROMA, FLUX, SDXL, WIZARD_MODELS, wizard_model
from tests.unit.test_wizard_view import _dataset, _models
from trainers import vram
from trainers.config import is_valid, native_support, toml_io, validate_texts
from trainers.config.registry import NATIVE_FAMILIES
from trainers.profiles.store import ProfileStore

# What a FLUX.1-dev diffusers download holds (diffusion-pipe models/flux.py loads the pipeline from it).
FLUX_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def _flux_folder(tmp_path, parts=FLUX_PARTS):
    folder = tmp_path / "FLUX.1-dev"
    for part in parts:
        (folder / part).mkdir(parents=True)
    return folder


def _flux_file(tmp_path):
    path = tmp_path / "flux-finetune.safetensors"
    save_file({k: np.zeros((2, 2), np.float16) for k in
               ["double_blocks.0.img_mod.lin.weight", "double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight",
                "single_blocks.0.linear1.weight"]}, str(path))
    return path


def test_every_model_the_wizard_offers_trains_natively():
    assert list(WIZARD_MODELS) == ["Chroma", "Flux", "SDXL"]
    assert all(m.type in NATIVE_FAMILIES for m in WIZARD_MODELS.values())
    assert wizard_model(None) is CHROMA and wizard_model("Flux") is FLUX


def test_flux_folder_alone_is_enough_and_missing_parts_are_named(tmp_path):
    text, ok = wv.check_models(str(_flux_folder(tmp_path)), "", "Flux")
    assert ok and "every part of a Flux run" in text and "folder's own transformer/ is trained" in text
    partial = _flux_folder(tmp_path / "p", parts=("vae", "text_encoder_2", "tokenizer_2"))
    text, ok = wv.check_models(str(partial), "", "Flux")
    assert not ok
    for part in ("transformer/", "text_encoder/", "tokenizer/"):
        assert f"no {part} folder" in text


def test_flux_transformer_file_is_probed_and_a_chroma_file_refused(tmp_path):
    folder = _flux_folder(tmp_path, parts=FLUX_PARTS[1:])  # no transformer/: the file replaces it
    text, ok = wv.check_models(str(folder), str(_flux_file(tmp_path)), "Flux")
    assert ok and "✓ flux transformer" in text
    _, chroma_file = _models(tmp_path)
    text, ok = wv.check_models(str(folder), str(chroma_file), "Flux")
    assert not ok and "is a chroma checkpoint, not Flux" in text
    # and the other way round: Chroma's wizard refuses a Flux file, as before
    text, ok = wv.check_models(str(folder), str(_flux_file(tmp_path)), "Chroma")
    assert not ok and "is a flux checkpoint, not Chroma" in text


def test_flux_pair_from_the_preset_validates_and_runs_natively(tmp_path):
    folder = _flux_folder(tmp_path)
    data = _dataset(tmp_path, bare=0, size=600)
    pair = wv.build_pair(ProfileStore(), wv.WizardChoices("Chroma E6AI 1024", str(folder), "", str(data),
                                                          str(tmp_path / "out"), model="Flux"))
    main = toml_io.loads_plain(pair.main_text)
    assert main["model"]["type"] == "flux" and main["model"]["diffusers_path"] == str(folder)
    assert "transformer_path" not in main["model"]  # optional for Flux: the folder's transformer trains
    assert main["studio"]["sample_guidance"] == 3.5 and main["studio"]["sample_steps"] == 20
    assert main["adapter"]["rank"] == 32 and toml_io.loads_plain(pair.dataset_text)["resolutions"] == [1024]
    issues = validate_texts(pair.main_text, pair.dataset_text, main_file=pair.main_name,
                            dataset_file=pair.dataset_name, base_dir=tmp_path, skip_path_checks=True)
    assert is_valid(issues), [i.format() for i in issues]
    assert native_support.backend_of(main) == native_support.NATIVE_BACKEND
    settings = wv.vram_settings(pair.main_text, pair.dataset_text)
    assert settings.model == "flux"
    flux_gb = vram.estimate(settings).total_gb
    assert flux_gb > vram.estimate(settings.__class__(**{**settings.__dict__, "model": "chroma"})).total_gb
    assert "Flux's architecture" in wv.vram_markdown(settings, 24)


def test_a_given_flux_transformer_file_is_kept(tmp_path):
    pair = wv.build_pair(ProfileStore(), wv.WizardChoices("Chroma E6AI 512", "/m/flux", "/m/ft.safetensors", "/d",
                                                          "/out", model="Flux"))
    assert toml_io.loads_plain(pair.main_text)["model"]["transformer_path"] == "/m/ft.safetensors"


def _sdxl_file(tmp_path, parts=("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight",
                                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                                "conditioner.embedders.1.model.ln_final.weight")):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "sd_xl_finetune.safetensors"
    save_file({k: np.zeros((2, 2), np.float16) for k in parts}, str(path))
    return path


def test_sdxl_asks_for_one_checkpoint_file_and_names_a_missing_part(tmp_path):
    """diffusion-pipe models/sdxl.py reads [model] checkpoint_path alone, with from_single_file (UNet, VAE and
    both CLIPs in one original-layout file); the wizard checks that file's header and no folder."""
    assert SDXL.folder_key is None and SDXL.file_key == "checkpoint_path" and SDXL.transformer_required
    text, ok = wv.check_models("", str(_sdxl_file(tmp_path)), "SDXL")
    assert ok and "✓ SDXL checkpoint `sd_xl_finetune.safetensors`" in text and "diffusers_path" not in text
    unet_only = _sdxl_file(tmp_path / "u", parts=("model.diffusion_model.input_blocks.0.0.weight",))
    text, ok = wv.check_models("", str(unet_only), "SDXL")
    assert not ok and "it lacks the VAE, the first CLIP text encoder" in text
    for part in ("the VAE", "the first CLIP text encoder", "the second (OpenCLIP) text encoder"):
        assert part in text
    text, ok = wv.check_models("", str(_flux_file(tmp_path)), "SDXL")
    assert not ok and "is not a whole SDXL checkpoint" in text and "the UNet" in text
    text, ok = wv.check_models("", str(tmp_path), "SDXL")
    assert not ok and "is not a .safetensors file" in text
    text, ok = wv.check_models("", "", "SDXL")
    assert not ok and "**checkpoint_path** is empty" in text


def test_sdxl_pair_from_the_preset_validates_and_runs_natively(tmp_path):
    checkpoint = _sdxl_file(tmp_path)
    data = _dataset(tmp_path, bare=0, size=600)
    pair = wv.build_pair(ProfileStore(), wv.WizardChoices("Chroma E6AI 1024", "", str(checkpoint), str(data),
                                                          str(tmp_path / "out"), model="SDXL"))
    main = toml_io.loads_plain(pair.main_text)
    assert main["model"]["type"] == "sdxl" and main["model"]["checkpoint_path"] == str(checkpoint)
    for key in ("diffusers_path", "transformer_path", "transformer_dtype", "flux_shift"):
        assert key not in main["model"], key  # Chroma's keys that diffusion-pipe's SDXL does not read
    assert main["studio"]["sample_guidance"] == 5.0 and main["studio"]["sample_steps"] == 30
    issues = validate_texts(pair.main_text, pair.dataset_text, main_file=pair.main_name,
                            dataset_file=pair.dataset_name, base_dir=tmp_path, skip_path_checks=True)
    assert is_valid(issues), [i.format() for i in issues]
    assert not [i for i in issues if i.key.startswith("model.")], [i.format() for i in issues]
    assert native_support.backend_of(main) == native_support.NATIVE_BACKEND
    settings = wv.vram_settings(pair.main_text, pair.dataset_text)
    assert settings.model == "sdxl" and "SDXL's architecture" in wv.vram_markdown(settings, 24)
