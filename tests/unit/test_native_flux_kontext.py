"""Flux Kontext (edit datasets, ``control_path``): pairing, position ids, token packing and the prediction,
against diffusion-pipe models/flux.py and utils/dataset.py (lines cited per test) and diffusers'
FluxKontextPipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

diffusers = pytest.importorskip("diffusers")
einops = pytest.importorskip("einops")

from tests.fixtures import flux_tiny as ft  # noqa: E402
from trainers.native import cache as cache_mod  # noqa: E402
from trainers.native.data import first_control, load_control, scan_dataset  # noqa: E402
from trainers.native.families import flux_kontext as fk  # noqa: E402
from trainers.native.families.base import TextBatch  # noqa: E402
from trainers.native.families.chroma import latent_image_ids  # noqa: E402

CPU = torch.device("cpu")


def _edit_dataset(root: Path, count: int = 3, control_suffix: str = ".jpg") -> dict:
    targets, controls = root / "targets", root / "controls"
    targets.mkdir()
    controls.mkdir()
    for i in range(count):
        Image.new("RGB", (64, 64), (30 * i, 200, 10)).save(targets / f"img{i}.png")
        (targets / f"img{i}.txt").write_text(f"make it red {i}", encoding="utf-8")
        Image.new("RGB", (96, 64), (200, 30 * i, 10)).save(controls / f"img{i}{control_suffix}")
    return {"resolutions": [64], "directory": [{"path": str(targets), "control_path": str(controls)}]}


# ----- pairing -----------------------------------------------------------------------------------------------
def test_targets_pair_with_the_control_of_the_same_stem(tmp_path: Path):
    # diffusion-pipe utils/dataset.py:634 (control files by stem, any suffix) and :669-672 (one per target)
    dataset = _edit_dataset(tmp_path)
    items = scan_dataset(dataset, 0, edit=True)
    assert [(i.path.name, i.control.name) for i in items] == [(f"img{n}.png", f"img{n}.jpg") for n in range(3)]
    assert all(i.control.parent == tmp_path / "controls" for i in items)


def test_the_control_is_cropped_to_its_targets_bucket(tmp_path: Path):
    # diffusion-pipe utils/dataset.py:1082-1083: the control is preprocessed with the target's size bucket
    items = scan_dataset(_edit_dataset(tmp_path), 0, edit=True)
    image = load_control(items[0])
    assert image.size == items[0].size == (64, 64)
    assert image.getpixel((32, 32)) == (200, 0, 10)


def test_the_previews_reference_is_the_first_examples_control(tmp_path: Path):
    dataset = _edit_dataset(tmp_path)
    assert first_control(dataset, 0) == tmp_path / "controls" / "img0.jpg"
    del dataset["directory"][0]["control_path"]
    assert first_control(dataset, 0) is None


def test_a_missing_control_names_the_file_and_the_fix(tmp_path: Path):
    # diffusion-pipe utils/dataset.py:670-671 raises 'No control file exists for image ...'
    dataset = _edit_dataset(tmp_path)
    (tmp_path / "controls" / "img1.jpg").unlink()
    with pytest.raises(ValueError, match=r"no control image for .*img1\.png: add .*controls/img1\.<ext>"):
        scan_dataset(dataset, 0, edit=True)


def test_two_controls_for_one_stem_are_refused(tmp_path: Path):
    dataset = _edit_dataset(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "controls" / "img0.png")
    with pytest.raises(ValueError, match="two control images for the stem 'img0'"):
        scan_dataset(dataset, 0, edit=True)


def test_families_without_edit_training_still_refuse_control_path(tmp_path: Path):
    with pytest.raises(ValueError, match="edit datasets are not supported for qwen_image"):
        scan_dataset(_edit_dataset(tmp_path), 0, model="qwen_image")


def test_edit_and_plain_directories_do_not_mix(tmp_path: Path):
    dataset = _edit_dataset(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGB", (64, 64)).save(plain / "x.png")
    (plain / "x.txt").write_text("x")
    dataset["directory"].append({"path": str(plain)})
    items = scan_dataset(dataset, 0, edit=True)
    with pytest.raises(ValueError, match="needs a control_path in every"):
        cache_mod.control_items(items)


# ----- position ids and packing ------------------------------------------------------------------------------
def test_control_ids_are_the_latent_ids_with_index_one():
    # diffusion-pipe models/flux.py:384-386: control ids = latent ids with the first dimension set to 1
    ids = fk.control_image_ids(3, 4, CPU, torch.float32)
    base = latent_image_ids(3, 4, CPU, torch.float32)
    assert torch.equal(ids[:, 0], torch.ones(12)) and torch.equal(ids[:, 1:], base[:, 1:])
    assert torch.equal(base[:, 0], torch.zeros(12))
    # the same ids FluxKontextPipeline gives its reference image (prepare_latents: image_ids[..., 0] = 1)
    ref = diffusers.FluxKontextPipeline._prepare_latent_image_ids(1, 3, 4, CPU, torch.float32)
    ref[..., 0] = 1
    assert torch.equal(ids, ref)


def test_control_tokens_follow_the_target_tokens():
    # diffusion-pipe models/flux.py:377 and :391-392: both packed "b c (h ph) (w pw) -> b (h w) (c ph pw)", the
    # control tokens concatenated after the target's; :390 the ids in the same order
    x_t, control = torch.randn(2, 16, 6, 8), torch.randn(2, 16, 6, 8)
    hidden, ids = fk.kontext_tokens(x_t, control, torch.float32)
    pack = "b c (h ph) (w pw) -> b (h w) (c ph pw)"
    expected = torch.cat([einops.rearrange(x_t, pack, ph=2, pw=2), einops.rearrange(control, pack, ph=2, pw=2)], 1)
    assert torch.equal(hidden, expected)
    assert torch.equal(ids, torch.cat([latent_image_ids(3, 4, CPU, torch.float32),
                                       fk.control_image_ids(3, 4, CPU, torch.float32)]))


def test_control_latents_must_have_the_target_shape():
    # diffusion-pipe models/flux.py:383: assert control_latents.shape == latents.shape
    with pytest.raises(ValueError, match="do not match the target latents"):
        fk.kontext_tokens(torch.zeros(1, 16, 4, 4), torch.zeros(1, 16, 4, 6), torch.float32)


class RecordingTransformer(torch.nn.Module):
    """Returns its hidden states doubled (so which tokens come back shows) and records its inputs."""

    dtype = torch.float32

    def forward(self, hidden_states, **kwargs):
        self.seen = {"hidden_states": hidden_states, **kwargs}
        return (hidden_states * 2,)


def test_the_prediction_keeps_only_the_target_tokens():
    # diffusion-pipe models/flux.py:379 counts img_seq_len before the controls are appended; OutputWrapper
    # :545-546 keeps hidden_states[:, :img_seq_len], so the loss (models/base.py) sees the target tokens only
    model = RecordingTransformer()
    x_t, control = torch.randn(1, 16, 4, 6), torch.randn(1, 16, 4, 6)
    out = fk.predict_kontext(model, x_t, control, torch.tensor([0.5]), torch.zeros(1, 5, 8), torch.zeros(1, 4),
                             None)
    assert torch.equal(out, 2 * x_t)
    assert model.seen["hidden_states"].shape == (1, 12, 64) and model.seen["img_ids"].shape == (12, 3)
    assert torch.equal(model.seen["txt_ids"], torch.zeros(5, 3))


# ----- cache -------------------------------------------------------------------------------------------------
class PoolingFamily:
    """Latents are 4x4-pooled pixels (what the control latents must be too), captions a constant."""

    name = "fake"
    device = CPU
    dtype = torch.float32

    def cache_key(self) -> str:
        return "v1"

    def encode_images(self, pixels, generator=None):
        return F.avg_pool2d(pixels, 4)

    def encode_prompts(self, captions):
        return TextBatch(torch.ones(len(captions), 2, 3), torch.ones(len(captions), 2))


def test_control_latents_are_cached_and_batched_with_their_targets(tmp_path: Path):
    # diffusion-pipe utils/dataset.py:1082-1098: targets and controls go through the same VAE call
    items = scan_dataset(_edit_dataset(tmp_path), 0, edit=True)
    cache = cache_mod.build_cache(PoolingFamily(), items, 0, batch_size=2)
    assert cache.stats.images_encoded == 6
    batch = cache_mod.Batch(0, (2, 0))
    latents, _, _ = cache_mod.batch_tensors(cache, batch, 0.0, None)
    controls = cache_mod.batch_controls(cache, batch)
    assert controls.shape == latents.shape == (2, 3, 16, 16)
    for row, item in zip(controls, (items[2], items[0]), strict=True):
        pixels = torch.from_numpy(np.asarray(load_control(item), dtype=np.float32))
        expected = F.avg_pool2d((pixels.permute(2, 0, 1)[None] / 255.0) * 2 - 1, 4)[0]
        assert torch.allclose(row, expected, atol=1e-6)
    again = cache_mod.build_cache(PoolingFamily(), items, 0, batch_size=2)
    assert again.stats.images_encoded == 0 and torch.equal(again.buckets[0].controls, cache.buckets[0].controls)


def test_plain_datasets_have_no_control_latents(tmp_path: Path):
    dataset = _edit_dataset(tmp_path)
    del dataset["directory"][0]["control_path"]
    cache = cache_mod.build_cache(PoolingFamily(), scan_dataset(dataset, 0), 0, persist=False)
    assert cache.buckets[0].controls is None and cache_mod.batch_controls(cache, cache_mod.Batch(0, (0,))) is None


# ----- equivalence with FluxKontextPipeline ------------------------------------------------------------------
def test_predict_matches_the_transformer_call_of_flux_kontext_pipeline(tmp_path: Path):
    # The call FluxKontextPipeline makes (its packing, ids and slicing) on the same latents, in float32.
    from trainers.native.families.chroma import unpack_latents
    from trainers.native.families.flux import FluxFamily

    torch.set_num_threads(1)
    family = FluxFamily.load(ft.model_table(ft.build(tmp_path)[0]), CPU)
    pipe = family.pipe
    kontext = fk.kontext_pipeline(pipe)
    calls = []

    def record(module, args, kwargs, output):
        calls.append(({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}, output[0].clone()))

    handle = pipe.transformer.register_forward_hook(record, with_kwargs=True)
    control = Image.new("RGB", (64, 64), (200, 40, 10))
    kontext(prompt="make it red", image=control, height=64, width=64, num_inference_steps=2, guidance_scale=3.5,
            generator=torch.Generator().manual_seed(0), _auto_resize=False, max_area=64 * 64)
    handle.remove()
    assert len(calls) == 2
    text = family.encode_prompts(["make it red"])
    side = 64 // kontext.vae_scale_factor  # latent side
    for kwargs, output in calls:
        hidden = kwargs["hidden_states"]
        n = hidden.shape[1] // 2
        assert n == (side // 2) ** 2
        x_t, ctrl = unpack_latents(hidden[:, :n], side, side), unpack_latents(hidden[:, n:], side, side)
        ids = torch.cat([latent_image_ids(side // 2, side // 2, CPU, torch.float32),
                         fk.control_image_ids(side // 2, side // 2, CPU, torch.float32)])
        assert torch.equal(kwargs["img_ids"], ids)
        assert torch.allclose(kwargs["encoder_hidden_states"], text.embeds)
        ours = family.predict(x_t, kwargs["timestep"], text, control=ctrl)
        theirs = unpack_latents(output[:, :n], side, side)
        assert (ours - theirs).abs().max() <= 1e-4


def test_eval_sets_hand_the_control_latents_to_predict(tmp_path: Path):
    # eval_datasets with control_path: each batch's controls reach predict, row for row with the targets
    from trainers.native.evaluate import EvalSet, evaluate
    from trainers.native.flow import LossConfig, TimestepConfig

    class Predicting(PoolingFamily):
        transformer = torch.nn.Linear(1, 1)
        seen: list = []

        def image_seq_len(self, shape):
            return (shape[-2] // 2) * (shape[-1] // 2)

        def predict(self, x_t, t, text, control=None):
            self.seen.append(control)
            return x_t * 0

    family = Predicting()
    cache = cache_mod.build_cache(family, scan_dataset(_edit_dataset(tmp_path), 0, edit=True), 0, persist=False)
    evaluate(family, EvalSet("edit", cache), TimestepConfig(), LossConfig(), 3)
    assert len(family.seen) == 9 and all(c is not None and c.shape == (3, 3, 16, 16) for c in family.seen)
    rows = cache.buckets[0].controls
    for control in family.seen[0]:  # every row is one of the cached control latents
        assert sum(torch.equal(control, row) for row in rows) == 1
    assert not torch.equal(family.seen[0][0], family.seen[0][1])
