"""Qwen-Image's registry numbers and LoRA key check (trainers/lora_check_qwen.py), from the released config and
the tiny model's files. diffusion-pipe models/qwen_image.py:180 targets every Linear inside the
QwenImageTransformerBlocks (models/base.py:262-270) and saves them with ``diffusion_model.`` keys (:284-288)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fixtures import qwen_image_tiny as qt
from trainers.config.registry import MODEL_TYPES
from trainers.lora_check import check_lora
from trainers.lora_check_qwen import FULL_SIZE, block_linears, is_qwen_lora, is_qwen_model
from trainers.native.families import qwen_image as qi

RANK = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return qt.build(tmp_path_factory.mktemp("qwen"))


def _released_transformer():
    import accelerate
    from diffusers import QwenImageTransformer2DModel

    with accelerate.init_empty_weights():  # diffusers' defaults are the released config (configs/qwen_image)
        return QwenImageTransformer2DModel()


def test_the_registry_numbers_are_the_released_models():
    model = _released_transformer()
    info = MODEL_TYPES["qwen_image"]
    modules = dict(model.named_modules())
    targets = qi.lora_targets(model)
    assert info.lora_params_per_rank == sum(modules[n].in_features + modules[n].out_features for n in targets)
    assert info.native_params == pytest.approx(sum(p.numel() for p in model.parameters()), rel=0.01)
    # the key check's released shapes are the same Linears
    linears = block_linears(FULL_SIZE["hidden"], FULL_SIZE["blocks"])
    assert sorted(linears) == sorted(targets)
    assert all(linears[n] == (modules[n].out_features, modules[n].in_features) for n in targets)


def _lora(transformer: torch.nn.Module, path, prefix: str = "diffusion_model.", rank: int = RANK, extra=()):
    tensors = {}
    for name in qi.lora_targets(transformer):
        linear = transformer.get_submodule(name)
        tensors[f"{prefix}{name}.lora_A.weight"] = torch.zeros(rank, linear.in_features)
        tensors[f"{prefix}{name}.lora_B.weight"] = torch.zeros(linear.out_features, rank)
    tensors.update(dict(extra))
    save_file(tensors, str(path))
    return path


def test_a_saved_lora_fits_the_single_file_and_the_diffusers_folder(tiny, tmp_path):
    lora = _lora(qt.transformer(), tmp_path / "adapter_model.safetensors")
    for model in (tiny[1]["transformer_path"], tiny[0], tiny[0] / "transformer"):
        assert is_qwen_model(model)
        report = check_lora(lora, model)
        assert report.ok, report.problems
        assert (report.covered, report.targets, report.ranks, report.layout) == (14, 14, [RANK], "comfyui")


def test_wrong_keys_and_shapes_are_reported(tiny, tmp_path):
    extra = {"diffusion_model.transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(RANK, 128),
             "diffusion_model.transformer_blocks.7.attn.to_q.lora_B.weight": torch.zeros(128, RANK)}
    lora = _lora(qt.transformer(), tmp_path / "a.safetensors", extra=extra)
    report = check_lora(lora, tiny[1]["transformer_path"])
    assert report.unmatched == ["diffusion_model.transformer_blocks.7.attn.to_q"]
    wide = _lora(qt.transformer(num_attention_heads=2), tmp_path / "b.safetensors")
    assert len(check_lora(wide, tiny[1]["transformer_path"]).mismatched) == 14


def test_without_the_model_the_released_shapes_are_used(tmp_path):
    lora = _lora(qt.transformer(), tmp_path / "a.safetensors")
    assert is_qwen_lora(list(load_file(str(lora))))
    report = check_lora(lora, tmp_path / "missing.safetensors")
    assert not report.exact and report.targets == 840 and len(report.mismatched) == 14
    assert "released Qwen-Image" in report.markdown()


def _random_lora(path, seed: int = 3):
    """A saved LoRA folder (ComfyUI keys as diffusion-pipe writes them) with random A and B."""
    gen = torch.Generator().manual_seed(seed)
    transformer = qt.transformer()
    tensors = {}
    for name in qi.lora_targets(transformer):
        linear = transformer.get_submodule(name)
        tensors[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(RANK, linear.in_features, generator=gen) * 0.1
        tensors[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(linear.out_features, RANK, generator=gen) * 0.1
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    return path


def _inputs(family):
    text = family.encode_prompts(["a red cat", "a dog"])
    return torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0.4, 0.9]), text


def test_fused_and_attached_loras_predict_the_same(tiny, tmp_path):
    # [adapter] fuse_adapters: W += weight * B @ A before training (diffusion-pipe load_and_fuse_adapter)
    folder = _random_lora(tmp_path / "lora")
    fused = qi.QwenImageFamily.load(qt.model_table(tiny[0]), torch.device("cpu"),
                                    fuse_adapters=[{"path": str(folder), "weight": 1.0}])
    attached = qi.QwenImageFamily.load(qt.model_table(tiny[0]), torch.device("cpu"))
    rank, _ = attached.attach_saved_lora(folder)
    plain = qi.QwenImageFamily.load(qt.model_table(tiny[0]), torch.device("cpu"))
    x, t, text = _inputs(plain)
    with torch.no_grad():
        a, b, c = fused.predict(x, t, text), attached.predict(x, t, text), plain.predict(x, t, text)
    assert rank == RANK
    assert (a - b).abs().max() < 1e-4 and (a - c).abs().max() > 1e-3


def test_activation_checkpointing_gives_the_same_gradients(tiny):
    grads = []
    for checkpointing in (False, True):
        family = qi.QwenImageFamily.load(qt.model_table(tiny[0]), torch.device("cpu"))
        torch.manual_seed(0)  # the same A initialisation in both runs
        params = family.attach_new_lora(RANK, 0.0)
        with torch.no_grad():
            for name, param in params:
                if "lora_B" in name:
                    param.normal_(generator=torch.Generator().manual_seed(len(name)))
        if checkpointing:
            family.enable_activation_checkpointing()
        family.transformer.train()
        x, t, text = _inputs(family)
        family.predict(x, t, text).square().mean().backward()
        # the last block's text-stream outputs are discarded, so its text MLP and to_add_out get no gradient
        grads.append({n: p.grad.clone() for n, p in params if p.grad is not None})
    assert sorted(grads[0]) == sorted(grads[1]) and len(grads[0]) >= 20
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    assert any(g.abs().sum() > 0 for g in grads[1].values())


def test_previews_use_true_cfg_with_the_negative_prompt(tiny):
    from trainers.native.families.base import SampleRequest

    family = qi.QwenImageFamily.load(qt.model_table(tiny[0]), torch.device("cpu"))

    def render(guidance: float, negative: str = "") -> torch.Tensor:
        image = family.sample([SampleRequest("a red cat", 7, 64, 48, 2, guidance, negative)])[0]
        assert image.size == (64, 48)
        return torch.from_numpy(np.asarray(image, dtype=np.float32))

    plain, again = render(1.0), render(1.0)
    assert torch.equal(plain, again)  # seeded
    assert not torch.equal(render(4.0, "a blue dog"), plain)
    assert not torch.equal(render(4.0, "a blue dog"), render(4.0, "a cat photo"))  # the negative prompt is used
    with pytest.raises(ValueError, match="multiples of 16"):
        family.sample([SampleRequest("a red cat", 7, 72, 64, 2, 1.0)])
