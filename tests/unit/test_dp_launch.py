"""Launching diffusion-pipe: the command, the environment (W&B key only there), and the launch copy of the configs
(absolute paths, nothing else changed, comments kept, no key in any file)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from trainers.diffusion_pipe.launch import (
    LaunchSettings,
    build_command,
    build_launch,
    launch_env,
    settings_from_studio,
    stored_wandb_key,
    write_launch_copy,
)

MAIN = """\
# my chroma profile
output_dir = 'out'  # relative to this file
dataset = 'ds.toml'
epochs = 4
save_every_n_epochs = 1
eval_datasets = [{name = 'val', config = 'eval.toml'}]

[model]
type = 'chroma'
dtype = 'bfloat16'
diffusers_path = "models/FLUX.1-dev"
transformer_path = '/abs/chroma.safetensors'
vae_path = '<fill in: the VAE file>'
llm_path = '~/models/t5'
text_encoders = [{path = 'te/qwen.safetensors', type = 'lumina2'}]

[adapter]
type = 'lora'
rank = 32

[optimizer]
type = 'adamw_optimi'
lr = 2e-5

[monitoring]
enable_wandb = true
wandb_tracker_name = 'dp'
wandb_run_name = 'r1'

[studio]
backend = 'diffusion-pipe'
"""
DATASET = """\
# dataset comment
resolutions = [512]
enable_ar_bucket = true

[[directory]]
path = 'images'  # images next to the profile
mask_path = '/abs/masks'
num_repeats = 2
"""


def make_run(tmp_path: Path, main: str = MAIN) -> tuple[Path, Path]:
    source = tmp_path / "profile"
    source.mkdir()
    (source / "main.toml").write_text(main)
    (source / "ds.toml").write_text(DATASET)
    (source / "eval.toml").write_text("resolutions = [512]\n\n[[directory]]\npath = 'val_images'\n")
    run_dir = tmp_path / "runs" / "20260101_00-00-00"
    run_dir.mkdir(parents=True)
    for name in ("main.toml", "ds.toml"):
        (run_dir / name).write_bytes((source / name).read_bytes())
    return source, run_dir


def test_deepspeed_command_as_documented():
    settings = LaunchSettings(num_gpus=2, master_port=29600, resume="20250212_07-06-40")
    argv = build_command(["deepspeed"], Path("/r/.launch/main.toml"), settings)
    assert argv == ["deepspeed", "--num_gpus=2", "--master_port", "29600", "train.py", "--deepspeed", "--config",
                    "/r/.launch/main.toml", "--resume_from_checkpoint", "20250212_07-06-40", "--master_port", "29600"]
    assert build_command(["/env/bin/deepspeed"], Path("c.toml"), LaunchSettings()) == [
        "/env/bin/deepspeed", "--num_gpus=1", "train.py", "--deepspeed", "--config", "c.toml"]
    runner = build_command(["/py", "-m", "deepspeed.launcher.runner"], Path("c.toml"), LaunchSettings())
    assert runner[3] == "--num_gpus=1"


def test_a_plain_python_launcher_gets_no_launcher_flags():
    argv = build_command(["/usr/bin/python3"], Path("c.toml"), LaunchSettings(num_gpus=4))
    assert argv == ["/usr/bin/python3", "train.py", "--deepspeed", "--config", "c.toml"]


def test_environment_defaults_and_options():
    assert launch_env(LaunchSettings()) == {"PYTHONUNBUFFERED": "1", "NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}
    env = launch_env(LaunchSettings(disable_nccl_p2p_ib=False, expandable_segments=True))
    assert "NCCL_P2P_DISABLE" not in env and env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_wandb_key_goes_to_the_child_environment_only():
    spec = build_launch(["deepspeed"], Path("/dp"), Path("/r/c.toml"), LaunchSettings(), wandb_key="sekrit-key-123")
    assert spec.cwd == Path("/dp")
    assert spec.env({"PATH": "/bin"})["WANDB_API_KEY"] == "sekrit-key-123"
    assert "sekrit" not in spec.describe() and "WANDB_API_KEY=***" in spec.describe()
    assert "sekrit" not in repr(spec)
    assert "WANDB_API_KEY" not in build_launch(["deepspeed"], Path("/dp"), Path("c"), LaunchSettings()).secret_env


def test_stored_key_comes_from_the_secret_store(monkeypatch):
    from trainers.config.secrets import SecretStore

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert stored_wandb_key() is None
    SecretStore().set("wandb_api_key", "from-the-store")
    assert stored_wandb_key() == "from-the-store"


def test_settings_from_the_studio_table():
    s = settings_from_studio({"dp_num_gpus": 2, "dp_master_port": 29501, "dp_disable_nccl_p2p_ib": False,
                              "dp_expandable_segments": True, "dp_extra_args": ["--trust_cache"]}, resume="x")
    assert s == LaunchSettings(num_gpus=2, master_port=29501, disable_nccl_p2p_ib=False, expandable_segments=True,
                               resume="x", extra_args=("--trust_cache",))
    assert settings_from_studio({}) == LaunchSettings()
    flagged = settings_from_studio({"i_know_what_i_am_doing": True}, regenerate_cache=True)
    assert (flagged.i_know_what_i_am_doing, flagged.regenerate_cache) == (True, True)


def test_flags_for_regenerate_cache_and_i_know_what_i_am_doing_are_added_once():
    settings = LaunchSettings(regenerate_cache=True, i_know_what_i_am_doing=True, extra_args=("--regenerate_cache",))
    argv = build_command(["deepspeed"], Path("c.toml"), settings)
    assert argv[-2:] == ["--i_know_what_i_am_doing", "--regenerate_cache"]
    assert argv.count("--regenerate_cache") == 1


def test_launch_copy_makes_only_path_values_absolute(tmp_path):
    source, run_dir = make_run(tmp_path)
    copy = write_launch_copy(run_dir, "main.toml", "ds.toml", source)
    assert copy.main == run_dir / ".launch" / "main.toml" and copy.output_dir == run_dir / "dp"
    assert copy.output_dir.is_dir()
    before = tomllib.loads(MAIN)
    after = tomllib.loads(copy.main.read_text())
    assert after["output_dir"] == str(run_dir / "dp")
    assert after["dataset"] == str(run_dir / ".launch" / "ds.toml")
    assert after["model"]["diffusers_path"] == str(source / "models" / "FLUX.1-dev")
    assert after["model"]["text_encoders"][0]["path"] == str(source / "te" / "qwen.safetensors")
    for key in ("transformer_path", "vae_path", "llm_path"):  # absolute, placeholder, ~: left as written
        assert after["model"][key] == before["model"][key]
    eval_copy = Path(after["eval_datasets"][0]["config"])
    assert eval_copy == run_dir / ".launch" / "eval0" / "eval.toml"
    assert tomllib.loads(eval_copy.read_text())["directory"][0]["path"] == str(source / "val_images")
    after["monitoring"].pop("wandb_api_key")
    for data in (before, after):
        for key in ("output_dir", "dataset", "eval_datasets"):
            data.pop(key)
        for key in ("diffusers_path", "text_encoders"):
            data["model"].pop(key)
    assert after == before  # nothing but path values changed
    text = copy.main.read_text()
    assert text.startswith("# my chroma profile\n") and "# relative to this file" in text
    assert (run_dir / "main.toml").read_text() == MAIN  # the run folder's copy stays byte-identical


def test_dataset_launch_copy_keeps_comments_and_other_values(tmp_path):
    source, run_dir = make_run(tmp_path)
    copy = write_launch_copy(run_dir, "main.toml", "ds.toml", source)
    text = copy.dataset.read_text()
    assert "# dataset comment" in text and "# images next to the profile" in text
    data = tomllib.loads(text)
    assert data["directory"][0] == {"path": str(source / "images"), "mask_path": "/abs/masks", "num_repeats": 2}
    assert data["resolutions"] == [512] and data["enable_ar_bucket"] is True


def test_wandb_key_placeholder_is_empty_and_no_key_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "sekrit-key-123")
    source, run_dir = make_run(tmp_path)
    copy = write_launch_copy(run_dir, "main.toml", "ds.toml", source)
    assert tomllib.loads(copy.main.read_text())["monitoring"]["wandb_api_key"] == ""
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert b"sekrit" not in path.read_bytes()


def test_without_wandb_nothing_is_added_and_max_steps_overrides(tmp_path):
    source, run_dir = make_run(tmp_path, MAIN.replace("enable_wandb = true", "enable_wandb = false"))
    copy = write_launch_copy(run_dir, "main.toml", "ds.toml", source, max_steps=50,
                             output_dir=tmp_path / "elsewhere")
    data = tomllib.loads(copy.main.read_text())
    assert "wandb_api_key" not in data["monitoring"]
    assert data["max_steps"] == 50 and data["output_dir"] == str(tmp_path / "elsewhere")
