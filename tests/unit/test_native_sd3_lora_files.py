"""SD3 LoRA files in the studio: the key check (``dp-studio check-lora``, the log line after each save) and the
runs library's exports, on a LoRA saved as diffusion-pipe saves SD3's (models/sd3.py lines 63-64:
``save_lora_weights``, ``transformer.`` keys in ``pytorch_lora_weights.safetensors``), told apart from Flux's
(the same layout and, for the joint blocks, the same names)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from tests.fixtures import sd3_tiny as st  # noqa: E402
from trainers import lora_check_flux, lora_check_sd3  # noqa: E402
from trainers.config.registry import MODEL_TYPES  # noqa: E402
from trainers.lora_check import check_lora, log_line  # noqa: E402
from trainers.native import export  # noqa: E402
from trainers.native.families import sd3  # noqa: E402

RANK = 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path]:
    """(saved folder, diffusers folder holding transformer/) of the tiny SD3 model."""
    root = tmp_path_factory.mktemp("sd3_lora")
    model = st.tiny_transformer()
    model.save_pretrained(root / "pipe" / "transformer")
    model.add_adapter(peft.LoraConfig(r=RANK, lora_alpha=RANK, target_modules=sd3.lora_targets(model)))
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in peft.get_peft_model_state_dict(model).items()}
    (root / "step2").mkdir()
    save_file(sd3.export_lora(state), str(root / "step2" / sd3.LORA_FILE), metadata={"format": "pt"})
    return root / "step2", root / "pipe"


def test_block_linears_match_the_real_transformer():
    # models/sd3.py line 28: every Linear of JointTransformerBlock, the last block context_pre_only
    model = st.tiny_transformer()
    real = {n: (m.out_features, m.in_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("transformer_blocks.")}
    assert lora_check_sd3.block_linears(32, 2, dual=1) == real
    assert lora_check_sd3.block_linears(32, 2) == {  # SD3 Medium's kind: no dual attention, 6-wide AdaLN
        n: s for n, s in real.items() if ".attn2." not in n} | {"transformer_blocks.0.norm1.linear": (6 * 32, 32)}


def test_the_registry_lora_size_is_sd35_large_block_linears():
    linears = lora_check_sd3.block_linears(*lora_check_sd3.RELEASED["SD3.5 Large"])
    assert len(linears) == 529
    assert sum(i + o for o, i in linears.values()) == MODEL_TYPES["sd3"].lora_params_per_rank


def test_the_check_passes_against_the_model_folder(saved):
    folder, pipe = saved
    targets = len(sd3.lora_targets(st.tiny_transformer()))
    for model in (pipe, pipe / "transformer"):
        assert lora_check_sd3.is_sd3_model(model) and not lora_check_sd3.is_sd3_model(folder / sd3.LORA_FILE)
        report = check_lora(folder / sd3.LORA_FILE, model)
        assert report.ok and report.exact, report.markdown()
        assert (report.layout, report.covered, report.targets, report.ranks) == ("diffusers", targets, targets, [RANK])


def test_the_check_finds_keys_and_shapes_that_do_not_fit(saved, tmp_path):
    folder, pipe = saved
    tensors = load_file(str(folder / sd3.LORA_FILE))
    for ab in "AB":
        tensors[f"transformer.transformer_blocks.0.attn.to_qq.lora_{ab}.weight"] = tensors.pop(
            f"transformer.transformer_blocks.0.attn.to_q.lora_{ab}.weight")
    tensors["transformer.transformer_blocks.1.ff.net.2.lora_A.weight"] = torch.zeros(RANK, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    report = check_lora(bad, pipe)
    assert report.unmatched == ["transformer.transformer_blocks.0.attn.to_qq"]
    assert [m.split(":")[0] for m in report.mismatched] == ["transformer.transformer_blocks.1.ff.net.2"]


def test_without_the_model_an_sd3_lora_is_told_from_flux_and_a_released_sd3_assumed(saved):
    folder, _ = saved
    keys = list(load_file(str(folder / sd3.LORA_FILE)))
    assert lora_check_sd3.is_sd3_lora(keys)
    flux_keys = [f"transformer.{n}.lora_{ab}.weight" for n in lora_check_flux.block_linears(64, 128, 2, 2)
                 for ab in "AB"]
    assert not lora_check_sd3.is_sd3_lora(flux_keys)
    report = check_lora(folder / sd3.LORA_FILE, None)
    assert not report.exact and "released SD3.5 Large" in report.model and report.targets == 529
    level, message = log_line("step2", folder / sd3.LORA_FILE, None)
    assert level == "warning" and "released SD3" in message  # the tiny LoRA does not fit the 2432-wide model
    medium = {k: [RANK, 1536] if k.endswith("lora_A.weight") else [1536, RANK] for k in keys}
    assert "SD3.5 Medium" in lora_check_sd3.released_shapes(medium)[1]


def test_exports_carry_the_saved_tensors_under_sd3_metadata(saved, tmp_path):
    folder, _ = saved
    saved_tensors = load_file(str(folder / sd3.LORA_FILE))
    for layout in ("comfyui", "diffusers"):
        out = export.export(folder, layout, tmp_path / f"{layout}.safetensors", {"run_id": "r1"})
        exported = load_file(str(out))
        assert exported.keys() == saved_tensors.keys()
        assert all(torch.equal(exported[k], v) for k, v in saved_tensors.items())
        with safe_open(str(out), "pt") as fh:
            meta = fh.metadata()
        assert meta["dp_studio.base_model"] == "sd3" and meta["ss_network_dim"] == str(RANK)
        assert meta["dp_studio.layout"] == layout and meta["dp_studio.run_id"] == "r1"
    with pytest.raises(export.ExportError, match="kohya layout is not available for SD3"):
        export.export(folder, "kohya", tmp_path / "kohya.safetensors")
