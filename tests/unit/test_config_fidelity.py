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
    # ... so with flux_shift = true the flux shift applies (chroma.py:265) and no "shift wins" warning is due
    assert _at(_issues(main.replace("shift = 0", "shift = 0\nflux_shift = true")), "model.flux_shift") == []
    assert _at(_issues(main.replace("shift = 0", "shift = 3\nflux_shift = true")), "model.flux_shift")
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


# ----- what diffusion-pipe fails on ------------------------------------------------------------------------------

def test_resolutions_only_inside_a_directory_is_an_error() -> None:
    # utils/dataset.py:469: directory_config.get('resolutions', dataset_config['resolutions']) -> KeyError
    dataset = DATASET.replace("resolutions = [512]\n", "") + "resolutions = [512]\n"
    found = _at(_errors(_issues(SDXL, dataset)), "directory[0].resolutions")
    assert found and "KeyError" in found[0].message and "top" in found[0].fix


def test_ar_keys_only_inside_a_directory_are_errors() -> None:
    # utils/dataset.py:502-504: min_ar / max_ar / num_ar_buckets read the same way when AR buckets are on
    top = "resolutions = [512]\nenable_ar_bucket = true\n[[directory]]\npath = '/data'\n"
    dataset = top + "min_ar = 0.5\nmax_ar = 2.0\nnum_ar_buckets = 7\n"
    errors = _errors(_issues(SDXL, dataset))
    assert {issue.key for issue in errors} >= {f"directory[0].{key}" for key in ("min_ar", "max_ar", "num_ar_buckets")}
    # utils/dataset.py:499: a non-empty ar_buckets replaces them, and 460: size_buckets replace everything
    assert _errors(_issues(SDXL, top + "ar_buckets = [1.0]\nmin_ar = 0.5\n")) == []
    assert _errors(_issues(SDXL, "[[directory]]\npath = '/d'\nsize_buckets = [[512, 512, 1]]\n"
                               "resolutions = [512]\n")) == []


def test_directory_override_with_a_top_level_value_is_fine() -> None:
    dataset = DATASET + "resolutions = [768]\nmin_ar = 1.0\n"
    assert _errors(_issues(SDXL, dataset)) == []


def test_control_path_on_a_type_without_edit_training_is_an_error() -> None:
    # utils/dataset.py:1249 calls call_vae_fn(tensor, control_tensor); models/base.py:256 takes one argument
    dataset = DATASET + "control_path = '/data/control'\n"
    found = _at(_issues(SDXL, dataset), "directory[0].control_path")
    assert found and found[0].is_error and "TypeError" in found[0].message
    flux = SDXL.replace("type = 'sdxl'", "type = 'flux'").replace(
        "checkpoint_path = '/models/sdxl.safetensors'", "diffusers_path = '/models/flux'")
    assert _at(_issues(flux, dataset), "directory[0].control_path") == []


def test_more_than_three_resolutions_needs_the_backend_flag() -> None:
    # utils/dataset.py:525-531 quits above 3 resolutions unless train.py:433 passes --i_know_what_i_am_doing
    dataset = DATASET.replace("resolutions = [512]", "resolutions = [256, 512, 768, 1024]")
    found = _at(_issues(SDXL, dataset), "resolutions")
    assert found and found[0].is_error and "dp_extra_args" in found[0].fix
    flagged = SDXL + "[studio]\ndp_extra_args = ['--i_know_what_i_am_doing']\n"
    found = _at(_issues(flagged, dataset), "resolutions")
    assert found and not found[0].is_error
    # the native trainer does not read dp_extra_args: the limit stays an error there
    assert _at(_errors(_issues(flagged, dataset, backend="native")), "resolutions")
