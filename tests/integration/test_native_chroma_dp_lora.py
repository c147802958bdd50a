"""The native Chroma LoRA is diffusion-pipe's LoRA: trained 3 steps by the real trainer, its file has
diffusion-pipe's keys, shapes, dtype and adapter_config, and merged into the original-layout weights the way
diffusion-pipe's peft applies it, it gives the transformer output the trained adapter gives.

diffusion-pipe (models/chroma.py:134, models/base.py:262-284) wraps every nn.Linear inside the original
``DoubleStreamBlock``/``SingleStreamBlock`` with peft's LoRA (r = alpha = rank, bias 'none'), saves the LoRA
weights (``.default`` removed, utils/saver.py:74) with the ``diffusion_model.`` prefix and ``{'format': 'pt'}``
metadata (models/chroma.py:176-180) and the peft config with ``save_pretrained`` (indent 2, sorted keys,
peft/config.py). A peft LoRA on a Linear adds ``scale * B @ (A @ x)`` with scale = alpha / r = 1.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import ChromaTransformer2DModel
from safetensors import safe_open

from tests.fixtures.chroma_tiny import forward_inputs, one_thread
from tests.integration.test_native_train import REPO, finish, make_run, start
from trainers.native.families.chroma_keys import PREFIX, from_original_checkpoint, to_original_checkpoint
from trainers.native.lora_io import adapter_file

pytestmark = pytest.mark.integration
RANK = 8  # profiles/demo/chroma_demo.toml [adapter] rank


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step run of the demo profile (the real child process); its step3 folder."""
    tmp = tmp_path_factory.mktemp("dp_lora")
    run_dir = make_run(tmp, **{"max_steps": 3, "studio.sample_at_start": False, "studio.sample_every_n_steps": 0})
    finish(start(run_dir), run_dir)
    return run_dir / "step3"


def _base() -> ChromaTransformer2DModel:
    return ChromaTransformer2DModel.from_pretrained(REPO / "assets" / "demo" / "chroma-tiny", local_files_only=True)


def _original_linears(model: ChromaTransformer2DModel) -> dict[str, list[int]]:
    """The original-layout Linears inside the blocks (what diffusion-pipe targets) -> weight shape."""
    original = to_original_checkpoint(model.state_dict())
    return {k.removesuffix(".weight"): list(v.shape) for k, v in original.items()
            if k.startswith(("double_blocks.", "single_blocks.")) and k.endswith(".weight") and v.ndim == 2}


def test_saved_file_is_diffusion_pipes_lora(trained):
    linears = _original_linears(_base())
    with safe_open(str(adapter_file(trained, "LoRA")), framework="pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        shapes = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
    expected = {}
    for module, (out, inp) in linears.items():
        expected[f"{PREFIX}{module}.lora_A.weight"] = [RANK, inp]
        expected[f"{PREFIX}{module}.lora_B.weight"] = [out, RANK]
    assert shapes == expected  # fused qkv/linear1 included: A [r, in], B [sum(out), r]
    assert dtypes == {torch.float32}  # [adapter] dtype of the demo profile, no save_dtype
    config = json.loads((trained / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == RANK
    assert config["bias"] == "none" and config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    assert sorted(config["target_modules"]) == sorted(linears)  # full original names, every block Linear
    assert config["exclude_modules"] is None


def test_trainable_parameters_are_diffusion_pipes_count(trained):
    """peft's print_trainable_parameters line (models/base.py:299) counts r * (in + out) per target Linear."""
    linears = _original_linears(_base())
    expected = sum(RANK * (inp + out) for out, inp in linears.values())
    log = (trained.parent / "stdout.log").read_text(encoding="utf-8", errors="replace")
    assert f"trainable params: {expected:,} ||" in log


def test_merged_original_layout_gives_the_adapters_output(trained):
    """Merge W += B @ A into the original (fused) weights, as peft's merge on diffusion-pipe's model does, convert
    to diffusers, and compare with the saved LoRA attached the way the trainer had it: max abs diff <= 1e-5."""
    from tests.fixtures.chroma_tiny import model_table
    from trainers.native.families.chroma import ChromaFamily

    with one_thread():
        family = ChromaFamily.load(model_table(REPO / "assets" / "demo" / "chroma-tiny"), torch.device("cpu"))
        family.attach_saved_lora(trained)
        base = _base()
        original = to_original_checkpoint(base.state_dict())
        with safe_open(str(adapter_file(trained, "LoRA")), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        for key, a in tensors.items():
            if key.endswith(".lora_A.weight"):
                module = key[len(PREFIX):-len(".lora_A.weight")]
                b = tensors[f"{PREFIX}{module}.lora_B.weight"]
                original[f"{module}.weight"] = original[f"{module}.weight"] + b.double().matmul(a.double()).float()
        merged = _base()
        merged.load_state_dict(from_original_checkpoint(original))
        inputs = _demo_inputs(base)
        with torch.no_grad():
            ours = family.transformer.eval()(**inputs, return_dict=False)[0]
            theirs = merged.eval()(**inputs, return_dict=False)[0]
            plain = base.eval()(**inputs, return_dict=False)[0]
    assert (ours - plain).abs().max() > 1e-4  # the LoRA trained: it changes the output
    assert (ours - theirs).abs().max() <= 1e-5


def _demo_inputs(model: ChromaTransformer2DModel) -> dict:
    """forward_inputs sized for the demo transformer."""
    gen = torch.Generator().manual_seed(5)
    inputs = forward_inputs()
    inputs["hidden_states"] = torch.randn(1, 16, model.config.in_channels, generator=gen)
    inputs["encoder_hidden_states"] = torch.randn(1, 6, model.config.joint_attention_dim, generator=gen)
    return inputs
