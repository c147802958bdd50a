from __future__ import annotations

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from studio import wizard_view as wv
from trainers.config import is_valid, toml_io, validate_texts
from trainers.profiles.store import ProfileStore


def _models(tmp_path):
    flux = tmp_path / "flux"
    for part in ("vae", "text_encoder_2", "tokenizer_2"):
        (flux / part).mkdir(parents=True)
    ckpt = tmp_path / "chroma.safetensors"
    save_file({k: np.zeros((2, 2), np.float16) for k in
               ["distilled_guidance_layer.in_proj.weight", "double_blocks.0.img_attn.qkv.weight",
                "single_blocks.0.linear1.weight"]}, str(ckpt))
    return flux, ckpt


def _dataset(tmp_path, captioned=3, bare=1, size=256):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(captioned + bare):
        Image.new("RGB", (size, size), "red").save(folder / f"img{i}.png")
        if i < captioned:
            (folder / f"img{i}.txt").write_text("a red square")
    return folder


def test_model_check_accepts_chroma_and_names_problems(tmp_path):
    flux, ckpt = _models(tmp_path)
    text, ok = wv.check_models(str(flux), str(ckpt))
    assert ok and "chroma transformer, original key layout, float16" in text
    text, ok = wv.check_models(str(tmp_path / "missing"), "")
    assert not ok and "not a folder" in text and "transformer_path** is empty" in text
    save_file({"guidance_in.w": np.zeros(2, np.float16), "double_blocks.0.x": np.zeros(2, np.float16)},
              str(tmp_path / "flux.safetensors"))
    text, ok = wv.check_models(str(flux), str(tmp_path / "flux.safetensors"))
    assert not ok and "is a flux checkpoint, not Chroma" in text


def test_a_checkpoint_of_no_known_family_is_named_with_the_right_article(tmp_path):
    """Issue 11 item 10: the check said "a unknown checkpoint"."""
    flux, _ = _models(tmp_path)
    save_file({"some.other.weight": np.zeros(2, np.float16)}, str(tmp_path / "other.safetensors"))
    text, ok = wv.check_models(str(flux), str(tmp_path / "other.safetensors"))
    assert not ok and "is an unknown checkpoint, not Chroma" in text and "a unknown" not in text


def test_dataset_check_counts_captions_and_small_images(tmp_path):
    text, ok = wv.check_dataset(str(_dataset(tmp_path)), 512)
    assert ok and "4 images" in text and "1 without a .txt caption" in text and "4 smaller than 512" in text
    assert wv.check_dataset(str(tmp_path / "nope"), 512)[1] is False


def test_build_pair_fills_the_preset_and_validates(tmp_path):
    flux, ckpt = _models(tmp_path)
    data = _dataset(tmp_path, bare=0, size=600)
    store = ProfileStore()
    pair = wv.build_pair(store, wv.WizardChoices("Chroma E6AI 1024", str(flux), str(ckpt), str(data),
                                                 str(tmp_path / "out"), "my-run", True, 8))
    main = toml_io.loads_plain(pair.main_text)
    assert main["model"]["transformer_path"] == str(ckpt) and main["activation_checkpointing"] is True
    assert main["blocks_to_swap"] == 8 and main["monitoring"]["wandb_run_name"] == "my-run"
    assert main["studio"]["backend"] == "diffusion-pipe"  # block swap is not available natively
    assert "# Chroma E6AI 1024" in pair.main_text  # the preset's comments survive
    assert toml_io.loads_plain(pair.dataset_text)["directory"][0]["path"] == str(data)
    (tmp_path / "out").mkdir()
    issues = validate_texts(pair.main_text, pair.dataset_text, main_file=pair.main_name,
                            dataset_file=pair.dataset_name, base_dir=tmp_path, skip_path_checks=True)
    assert is_valid(issues), [i.format() for i in issues]
    settings = wv.vram_settings(pair.main_text, pair.dataset_text)
    assert (settings.resolution, settings.batch, settings.blocks_to_swap) == (1024, 1, 8)
    text = wv.vram_markdown(settings, 24)
    assert "Estimated peak VRAM" in text and "24 GB card" in text


def test_dataset_check_survives_bad_files_and_names_them(tmp_path):
    from tests.fixtures import bad_media

    folder = _dataset(tmp_path, captioned=2, bare=0)
    (folder / "junk.png").write_bytes(b"not an image at all")  # Image.open raises UnidentifiedImageError
    (folder / "junk.txt").write_text("junk")
    bad_media.latin1_caption(bad_media.good_png(folder / "latin.png", caption=None))
    bad_media.corrupt_jpeg(folder / "corrupt.jpg").with_suffix(".txt").write_text("x")
    text, ok = wv.check_dataset(str(folder), 512)
    assert ok and "✓ 2 images" in text and "(2 trained)" in text
    assert "3 skipped" in text and all(name in text for name in ("junk.png", "latin.png", "corrupt.jpg"))
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    bad_media.corrupt_jpeg(bad_only / "corrupt.jpg").with_suffix(".txt").write_text("x")
    text, ok = wv.check_dataset(str(bad_only), 512)
    assert not ok and "1 skipped" in text and "corrupt.jpg" in text
