"""Build the diffusion-pipe command, its environment and the launch copy of the configs.

diffusion-pipe runs with cwd = its checkout (it loads ``configs/...`` by relative path) and resolves every
relative path in the TOMLs against that cwd, while dp-studio users write paths relative to their main TOML.
So the run folder's byte-identical copies stay untouched, and ``<run dir>/.launch/`` gets copies in which only
path values are made absolute (tomlkit keeps everything else, comments included). ``output_dir`` points at
``<run dir>/dp``, where diffusion-pipe creates its own timestamped run folder.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.config.paths_check import dataset_paths, main_paths, placeholder_text
from trainers.config.toml_io import get_value, load, save, set_value
from trainers.diffusion_pipe.install import is_deepspeed_launcher

DP_SUBDIR = "dp"
LAUNCH_DIR = ".launch"
SECRET_ENV = ("WANDB_API_KEY",)


class LaunchError(RuntimeError):
    """The run cannot be launched; the message names what is wrong and the fix."""


@dataclass(frozen=True)
class LaunchSettings:
    """How to start diffusion-pipe; read from ``[studio]`` keys (see ``settings_from_studio``)."""

    num_gpus: int = 1
    master_port: int | None = None
    disable_nccl_p2p_ib: bool = True  # README: RTX 4000-series needs both; harmless elsewhere
    expandable_segments: bool = False  # PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (low-VRAM recipes)
    resume: str | None = None  # diffusion-pipe run folder name for --resume_from_checkpoint
    extra_args: tuple[str, ...] = ()
    # train.py reads regenerate_cache from the config only when the flag is None, which a store_true flag never is
    # (train.py:50, :305-308): the config key must become the flag for the config to mean what it says.
    regenerate_cache: bool = False
    i_know_what_i_am_doing: bool = False  # [studio] key: skip diffusion-pipe's dataset checks (utils/dataset.py:524)


def settings_from_studio(studio: Mapping[str, Any], resume: str | None = None, *,
                         regenerate_cache: bool = False) -> LaunchSettings:
    """``[studio] dp_num_gpus``, ``dp_master_port``, ``dp_disable_nccl_p2p_ib``, ``dp_expandable_segments``,
    ``dp_extra_args`` (list of train.py flags, e.g. ``['--trust_cache']``), ``i_know_what_i_am_doing``; plus the
    main config's top-level ``regenerate_cache``."""
    port = studio.get("dp_master_port")
    return LaunchSettings(num_gpus=int(studio.get("dp_num_gpus", 1)), master_port=int(port) if port else None,
                          disable_nccl_p2p_ib=bool(studio.get("dp_disable_nccl_p2p_ib", True)),
                          expandable_segments=bool(studio.get("dp_expandable_segments", False)),
                          resume=resume, extra_args=tuple(str(a) for a in studio.get("dp_extra_args", ())),
                          regenerate_cache=regenerate_cache is True,
                          i_know_what_i_am_doing=studio.get("i_know_what_i_am_doing") is True)


@dataclass(frozen=True)
class LaunchSpec:
    """argv, working folder and the environment variables added for the child (secrets kept apart)."""

    argv: list[str]
    cwd: Path
    env_additions: dict[str, str]
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child's full environment: ``base`` (default os.environ) plus additions and secrets."""
        full = dict(os.environ if base is None else base)
        full.update(self.env_additions)
        full.update(self.secret_env)
        return full

    def describe(self) -> str:
        """One line safe to log: environment additions, secrets masked, then the command."""
        shown = [f"{k}={shlex.quote(v)}" for k, v in self.env_additions.items()]
        shown += [f"{k}=***" for k in self.secret_env]
        return " ".join([*shown, shlex.join(self.argv)]) + f"  (in {self.cwd})"


def build_command(launcher: list[str], config: Path, settings: LaunchSettings) -> list[str]:
    """``deepspeed --num_gpus=N [--master_port P] train.py --deepspeed --config CONFIG [--resume_from_checkpoint
    NAME] [--master_port P]`` (notes §3); a plain-Python launcher gets no DeepSpeed launcher flags."""
    argv = list(launcher)
    port = ["--master_port", str(settings.master_port)] if settings.master_port else []
    if is_deepspeed_launcher(launcher):
        argv += [f"--num_gpus={settings.num_gpus}", *port]
    argv += ["train.py", "--deepspeed", "--config", str(config)]
    if settings.resume:
        argv += ["--resume_from_checkpoint", settings.resume]
    flags = [f"--{name}" for name in ("regenerate_cache", "i_know_what_i_am_doing") if getattr(settings, name)]
    # train.py writes --master_port into MASTER_PORT itself, overriding the launcher's value (notes §3).
    return argv + port + [f for f in flags if f not in settings.extra_args] + list(settings.extra_args)


def launch_env(settings: LaunchSettings) -> dict[str, str]:
    """Environment variables diffusion-pipe's README sets, plus unbuffered output so lines arrive live."""
    env = {"PYTHONUNBUFFERED": "1"}
    if settings.disable_nccl_p2p_ib:
        env.update(NCCL_P2P_DISABLE="1", NCCL_IB_DISABLE="1")
    if settings.expandable_segments:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    return env


def build_launch(launcher: list[str], checkout: Path, config: Path, settings: LaunchSettings, *,
                 wandb_key: str | None = None) -> LaunchSpec:
    """The whole launch (pure): command, cwd = checkout root, environment; the W&B key only in ``secret_env``."""
    secrets = {"WANDB_API_KEY": wandb_key} if wandb_key else {}
    return LaunchSpec(argv=build_command(launcher, config, settings), cwd=checkout,
                      env_additions=launch_env(settings), secret_env=secrets)


def stored_wandb_key() -> str | None:
    """The W&B key from dp-studio's secret store (environment first), never from a config file."""
    try:
        from trainers.config.secrets import SecretStore
    except ImportError:  # the store is optional; the environment still works
        return os.environ.get("WANDB_API_KEY") or None
    return SecretStore().get("wandb_api_key")


# ---- the launch copy ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchCopy:
    main: Path
    dataset: Path
    output_dir: Path
    changed: list[str]  # dotted keys whose value was changed, for the log


def absolute(value: Any, base: Path) -> str | None:
    """``value`` made absolute against ``base``; None when it must stay as written (absolute, empty, ``~``,
    a ``<fill in>`` placeholder or not a string: the validator reports those, nothing is corrected here)."""
    if not isinstance(value, str) or not value or value.startswith("~") or placeholder_text(value) is not None:
        return None
    if Path(value).is_absolute():
        return None
    return os.path.normpath(base / value)


def absolutize(doc: Any, paths: list[tuple[str, Any, str]], base: Path) -> list[str]:
    """Rewrite each relative path value in ``doc`` (tomlkit) as absolute; returns the dotted keys changed."""
    changed = []
    for dotted, value, _kind in paths:
        new = absolute(value, base)
        if new is not None:
            set_value(doc, dotted, new)
            changed.append(dotted)
    return changed


def write_launch_copy(run_dir: Path, main_name: str, dataset_name: str, source_dir: Path, *,
                      output_dir: Path | None = None, max_steps: int | None = None) -> LaunchCopy:
    """Write ``<run dir>/.launch/<main>`` and ``<dataset>`` (atomically) from the run folder's copies."""
    folder = run_dir / LAUNCH_DIR
    output_dir = output_dir or run_dir / DP_SUBDIR
    main_doc, ds_doc = load(run_dir / main_name), load(run_dir / dataset_name)
    data = main_doc.unwrap()
    skip = {"dataset", "output_dir"} | {f"eval_datasets[{i}].config" for i in range(len(data.get("eval_datasets", [])))}
    changed = absolutize(main_doc, [p for p in main_paths(data) if p[0] not in skip], source_dir)
    changed += _eval_copies(main_doc, data, folder, source_dir)
    set_value(main_doc, "output_dir", str(output_dir))
    set_value(main_doc, "dataset", str(folder / dataset_name))
    changed += ["output_dir", "dataset"]
    monitoring = data.get("monitoring") if isinstance(data.get("monitoring"), dict) else {}
    if monitoring.get("enable_wandb") and "wandb_api_key" not in monitoring:
        # diffusion-pipe reads the key unconditionally (KeyError without it); '' lets wandb use $WANDB_API_KEY.
        set_value(main_doc, "monitoring.wandb_api_key", "")
        changed.append("monitoring.wandb_api_key")
    if max_steps:
        set_value(main_doc, "max_steps", int(max_steps))
        changed.append("max_steps")
    changed += absolutize(ds_doc, dataset_paths(ds_doc.unwrap()), source_dir)
    save(folder / dataset_name, ds_doc)
    save(folder / main_name, main_doc)
    output_dir.mkdir(parents=True, exist_ok=True)
    return LaunchCopy(main=folder / main_name, dataset=folder / dataset_name, output_dir=output_dir, changed=changed)


def _eval_copies(main_doc: Any, data: dict, folder: Path, source_dir: Path) -> list[str]:
    """Eval dataset TOMLs get launch copies too (their [[directory]] paths are relative as well)."""
    changed = []
    for index, entry in enumerate(data.get("eval_datasets", [])):
        value = entry.get("config") if isinstance(entry, dict) else None
        source = Path(absolute(value, source_dir) or value) if isinstance(value, str) and value else None
        dotted = f"eval_datasets[{index}].config"
        if source is None or not source.is_file():
            changed += absolutize(main_doc, [(dotted, value, "file")], source_dir)
            continue
        doc = load(source)
        absolutize(doc, dataset_paths(doc.unwrap()), source_dir)
        target = folder / f"eval{index}" / source.name  # diffusion-pipe copies it under its own name
        save(target, doc)
        set_value(main_doc, dotted, str(target))
        changed.append(dotted)
    return changed


def wandb_enabled(main_doc_or_data: Any) -> bool:
    """Whether ``[monitoring] enable_wandb`` is on."""
    return bool(get_value(main_doc_or_data, "monitoring.enable_wandb", False))
