"""Validation agrees with diffusion-pipe: what it accepts passes, what it fails on is an error at the key.

Each test cites the diffusion-pipe source line whose behaviour it follows.
"""

from __future__ import annotations

from pathlib import Path

from trainers.config import validate_texts

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "configs" / "valid"
MINIMAX = (GOLDEN / "minimax_main.toml").read_text()
DATASET = "resolutions = [512]\nenable_ar_bucket = true\nmin_ar = 0.5\nmax_ar = 2.0\nnum_ar_buckets = 7\n" \
          "[[directory]]\npath = '/data/images'\n"
SDXL = """output_dir = '/out'
dataset = 'dataset.toml'
epochs = 1
save_every_n_epochs = 1
checkpoint_every_n_minutes = 120
[model]
type = 'sdxl'
checkpoint_path = '/models/sdxl.safetensors'
dtype = 'bfloat16'
[adapter]
type = 'lora'
rank = 16
dtype = 'bfloat16'
[optimizer]
type = 'adamw_optimi'
lr = 2e-5
"""


def _issues(main: str, dataset: str | None = DATASET, backend: str | None = "diffusion-pipe"):
    return validate_texts(main, dataset, skip_path_checks=True, backend=backend)


def _at(issues, key: str):
    return [issue for issue in issues if issue.key == key]


def _errors(issues):
    return [issue for issue in issues if issue.is_error]


def test_reference_configs_are_clean() -> None:
    assert _errors(_issues(SDXL)) == []
    assert _errors(_issues(MINIMAX)) == []


def test_fuse_adapters_on_a_type_that_ignores_it_is_a_warning() -> None:
    # only models/flux.py:197 and models/chroma.py:157 read [adapter] fuse_adapters; sdxl never looks at it
    main = SDXL.replace("rank = 16", "rank = 16\nfuse_adapters = [{path = '/l.safetensors', weight = 1.0}]")
    found = _at(_issues(main), "adapter.fuse_adapters")
    assert found and not any(issue.is_error for issue in found)
    assert "ignored" in found[0].message


def test_text_encoder_with_path_and_paths_or_a_path_list_is_accepted() -> None:
    # diffusion-pipe models/base.py:578-585: 'paths' wins over 'path'; a str becomes [str], a list is used as is
    both = MINIMAX.replace("{path = '/srv/models/minimax/qwen3vl",
                           "{paths = ['/a.safetensors'], path = '/srv/models/minimax/qwen3vl")
    as_list = MINIMAX.replace("{path = '/srv/models/minimax/qwen3vl_32b_minimax_h3_int8_convrot.safetensors'",
                              "{path = ['/a.safetensors', '/b.safetensors']")
    paths_str = MINIMAX.replace("{path = '/srv", "{paths = '/srv")
    for main in (both, as_list, paths_str):
        assert main != MINIMAX
        assert _errors(_issues(main, None)) == []


def test_text_encoder_without_path_is_still_an_error() -> None:
    # models/base.py:582: neither key -> ValueError('need text encoder path in config')
    main = MINIMAX.replace("{path = '/srv/models/minimax/qwen3vl_32b_minimax_h3_int8_convrot.safetensors', ", "{")
    assert any(issue.key.startswith("model.text_encoders") for issue in _errors(_issues(main, None)))


def test_text_encoder_paths_are_checked_where_diffusion_pipe_reads_them(tmp_path: Path) -> None:
    main = MINIMAX.replace("{path = '/srv/models/minimax/qwen3vl_32b_minimax_h3_int8_convrot.safetensors'",
                           "{path = ['/nowhere/a.safetensors']")
    issues = validate_texts(main, None, base_dir=tmp_path)
    assert _at(issues, "model.text_encoders[0].path[0]")


def test_shift_zero_means_no_shift() -> None:
    # models/chroma.py:263 (and every model): `if shift := model_config.get('shift', None)` -> 0 is no shift
    main = SDXL.replace("type = 'sdxl'", "type = 'flux'").replace(
        "checkpoint_path = '/models/sdxl.safetensors'", "diffusers_path = '/models/flux'\nshift = 0")
    assert _at(_issues(main), "model.shift") == []
    negative = main.replace("shift = 0", "shift = -1")
    assert _at(_errors(_issues(negative)), "model.shift")


def test_offload_optimizer_takes_offload_gradients() -> None:
    # train.py:687-690: CPUOffloadOptimizer(params, torch.optim.AdamW, **kwargs) takes offload_gradients itself
    main = SDXL.replace("type = 'adamw_optimi'", "type = 'offload'").replace(
        "lr = 2e-5", "lr = 2e-5\noffload_gradients = true")
    assert _at(_issues(main), "optimizer.offload_gradients") == []


def test_ltx2_reads_flux_shift() -> None:
    # models/ltx2.py:337: `elif self.model_config.get('flux_shift', False):`
    main = SDXL.replace("type = 'sdxl'", "type = 'ltx2'").replace(
        "checkpoint_path = '/models/sdxl.safetensors'",
        "diffusion_model = '/m/ltx2.safetensors'\ntext_encoder = '/m/gemma.safetensors'\nflux_shift = true")
    assert _at(_issues(main), "model.flux_shift") == []
