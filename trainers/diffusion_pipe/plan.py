"""Everything decided before diffusion-pipe is launched: the checkout's health, the launch copy of the configs, the
command, the schedule the parser needs, the run folder to resume and the eval sets to follow in TensorBoard."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from trainers.diffusion_pipe.install import checkout_health
from trainers.diffusion_pipe.launch import (
    LaunchCopy,
    LaunchError,
    LaunchSpec,
    build_launch,
    settings_from_studio,
    stored_wandb_key,
    write_launch_copy,
)
from trainers.diffusion_pipe.parse import Schedule
from trainers.diffusion_pipe.tb_eval import eval_names
from trainers.lora_check import CHECKED_TYPES, base_model_value
from trainers.runs import RUN_FILE, config_folder, resolve_config_path

DEFAULT_GRACE_S = 300.0  # save_quit is honoured at the next step, then a checkpoint is written
GRACE_ENV = "DP_STUDIO_STOP_GRACE_S"


@dataclass
class Plan:
    """Everything decided before launch."""

    spec: LaunchSpec
    copy: LaunchCopy
    schedule: Schedule
    grace_s: float
    dp_run_dir: Path | None = None  # known up front only when resuming
    warnings: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list, repr=False)
    check_loras: bool = False  # a Chroma LoRA run: each saved LoRA's keys are checked against the base model
    lora_base: Path | None = None  # the run's transformer_path, resolved as diffusion-pipe sees it
    eval_names: tuple[str, ...] = ()  # eval sets whose losses are read from TensorBoard
    x_axis_examples: bool = False  # TensorBoard's x is examples seen, not steps (train.py:926)


def prepare(run_dir: Path, meta: dict) -> Plan:
    """Check the checkout, write the launch copy and build the command; raise LaunchError naming the fix."""
    data = tomllib.loads((run_dir / meta["main_config"]).read_text(encoding="utf-8"))
    studio = data.get("studio") if isinstance(data.get("studio"), dict) else {}
    source_dir = config_folder(meta, Path(meta["source_main"]).parent if meta.get("source_main") else run_dir)
    health = checkout_health(studio, base=source_dir)
    if not health.ok:
        raise LaunchError("; ".join(i.describe() for i in health.errors()))
    resume = resume_folder(meta.get("resume"), run_dir)
    copy = write_launch_copy(run_dir, meta["main_config"], meta["dataset_config"], source_dir,
                             output_dir=resume.parent if resume else None, max_steps=meta.get("max_steps"))
    warnings = [i.describe() for i in health.warnings()]
    key = None
    if (data.get("monitoring") or {}).get("enable_wandb"):
        key = stored_wandb_key()
        if not key:
            warnings.append("W&B is enabled but no API key is stored. Fix: save it in the studio's settings "
                            "(secret store) or set WANDB_API_KEY")
    spec = build_launch(health.launcher, health.root, copy.main,
                        settings_from_studio(studio, resume=resume.name if resume else None,
                                             regenerate_cache=data.get("regenerate_cache") is True), wandb_key=key)
    schedule = Schedule.of(data, max_steps=meta.get("max_steps"))
    grace = float(os.environ.get(GRACE_ENV) or studio.get("dp_stop_grace_s") or DEFAULT_GRACE_S)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    base = base_model_value(model)
    checked = model.get("type") in CHECKED_TYPES
    return Plan(spec=spec, copy=copy, schedule=schedule, grace_s=grace, dp_run_dir=resume, warnings=warnings,
                secrets=[key] if key else [], check_loras=checked and schedule.save_kind == "lora",
                lora_base=resolve_config_path(source_dir, base) if isinstance(base, str) and base else None,
                eval_names=eval_names(data), x_axis_examples=bool(data.get("x_axis_examples")))


def resume_folder(value: object, run_dir: Path) -> Path | None:
    """The diffusion-pipe run folder to resume: ``run.json`` ``resume`` names it, or a studio run folder holding
    it (its ``dp_run_dir``). Relative values resolve against the runs folder."""
    if not value:
        return None
    if value is True:
        raise LaunchError("resume = true does not say which run to resume. Fix: resume from the runs library, which "
                          "names the run folder")
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else run_dir.parent / path
    meta_file = path / RUN_FILE
    if meta_file.is_file():
        inner = json.loads(meta_file.read_text(encoding="utf-8")).get("dp_run_dir")
        path = path / inner if inner else path
    if not (path / "latest").is_file():
        raise LaunchError(f"{path} holds no DeepSpeed checkpoint ('latest' file), so it cannot be resumed "
                          "(diffusion-pipe issue #73). Fix: set checkpoint_every_n_minutes or "
                          "checkpoint_every_n_epochs, or stop runs from the studio (it writes one on stop)")
    return path.resolve()
