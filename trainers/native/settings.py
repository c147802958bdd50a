"""What a native run reads: ``run.json``, the main TOML copy and its dataset TOML, as plain settings.

Relative paths in the configs resolve against the process working directory, which the launcher sets to
the source main TOML's folder (as for the user's own file with diffusion-pipe).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SEED = 42


@dataclass(frozen=True)
class StudioSettings:
    """The ``[studio]`` keys the native trainer reads (see docs/run-folder.md)."""

    prompts: tuple[str, ...] = ()
    negative_prompt: str = ""
    seeds: tuple[int, ...] = (DEFAULT_SEED,)
    every_n_steps: int = 0
    at_start: bool = False
    width: int = 512
    height: int = 512
    steps: int = 20
    guidance: float = 4.0

    @classmethod
    def from_table(cls, table: dict, default_size: int) -> StudioSettings:
        """Read ``[studio]``; sizes default to the dataset's first resolution."""
        seeds = table.get("sample_seeds") or [DEFAULT_SEED]
        return cls(
            prompts=tuple(str(p) for p in table.get("sample_prompts", [])),
            negative_prompt=str(table.get("sample_negative_prompt", "")),
            seeds=tuple(int(s) for s in seeds),
            every_n_steps=int(table.get("sample_every_n_steps", 0)),
            at_start=bool(table.get("sample_at_start", False)),
            width=int(table.get("sample_width", default_size)),
            height=int(table.get("sample_height", default_size)),
            steps=int(table.get("sample_steps", 20)),
            guidance=float(table.get("sample_guidance", 4.0)),
        )


@dataclass(frozen=True)
class RunSettings:
    """Everything the loop needs, read once at start."""

    run_dir: Path
    main_path: Path
    config: dict
    dataset_path: Path
    dataset: dict
    studio: StudioSettings
    epochs: int
    max_steps: int | None
    micro_batch: int
    grad_accum: int
    grad_clip: float
    warmup_steps: int
    lr_scheduler: str
    save_every_n_epochs: int | None
    save_every_n_steps: int | None
    save_every_n_examples: int | None
    seed: int
    uncond_fraction: float

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step (one process: micro batch x accumulation)."""
        return self.micro_batch * self.grad_accum


def read_toml(path: Path, what: str) -> dict:
    """A TOML file as a dict; errors name ``what`` and the path."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid TOML: {exc}") from None


def _dataset_path(run_dir: Path, run: dict, config: dict) -> Path:
    copy = run.get("dataset_config")
    if copy and (run_dir / copy).is_file():
        return run_dir / copy  # the byte-identical copy taken at launch
    if "dataset" not in config:
        raise KeyError("the main config has no `dataset` key (the path of the dataset TOML)")
    path = Path(config["dataset"]).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def _micro_batch(value) -> int:
    if isinstance(value, list):
        # Per-resolution form [[resolution, batch], ...]: the first batch size (as DeepSpeed's micro batch).
        return int(value[0][1])
    return int(value)


def _positive(config: dict, key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if int(value) <= 0:
        raise ValueError(f"`{key}` must be a positive integer, got {value!r}")
    return int(value)


def load_run(run_dir: Path, max_steps_override: int | None = None) -> RunSettings:
    """Read ``run.json`` and the configs it names; ``--max-steps`` beats run.json beats the TOML."""
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    if "main_config" not in run:
        raise KeyError(f"{run_dir / 'run.json'} has no `main_config` (the main TOML's file name)")
    main_path = run_dir / run["main_config"]
    config = read_toml(main_path, "main config")
    dataset_path = _dataset_path(run_dir, run, config)
    dataset = read_toml(dataset_path, "dataset config")
    max_steps = max_steps_override or run.get("max_steps") or config.get("max_steps")
    saves = [config.get(k) for k in ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")]
    if all(s is None for s in saves):
        # diffusion-pipe asserts the same at startup.
        raise ValueError("set one of save_every_n_epochs, save_every_n_steps or save_every_n_examples")
    resolutions = dataset.get("resolutions") or [512]
    first = resolutions[0]
    default_size = int((first[0] * first[1]) ** 0.5) if isinstance(first, list) else int(first)
    return RunSettings(
        run_dir=run_dir, main_path=main_path, config=config, dataset_path=dataset_path, dataset=dataset,
        studio=StudioSettings.from_table(config.get("studio", {}), default_size),
        epochs=int(config.get("epochs", 1)), max_steps=int(max_steps) if max_steps else None,
        micro_batch=_micro_batch(config.get("micro_batch_size_per_gpu", 1)),
        grad_accum=int(config.get("gradient_accumulation_steps", 1)),
        grad_clip=float(config.get("gradient_clipping", 1.0)),
        warmup_steps=int(config.get("warmup_steps", 0)),
        lr_scheduler=str(config.get("lr_scheduler", "constant")),
        save_every_n_epochs=_positive(config, "save_every_n_epochs"),
        save_every_n_steps=_positive(config, "save_every_n_steps"),
        save_every_n_examples=_positive(config, "save_every_n_examples"),
        seed=int(config.get("studio", {}).get("seed", DEFAULT_SEED)),
        uncond_fraction=float(config.get("uncond_fraction", 0.0)),
    )


def check_supported(config: dict, dataset: dict) -> list[str]:
    """Raise for what the native trainer refuses (the validator's table); return its warnings."""
    from trainers.config.native_support import native_rejections, native_warnings

    refused = native_rejections(config, dataset)
    if refused:
        raise ValueError("the native trainer cannot train this config:\n" + "\n".join(refused))
    return native_warnings(config, dataset)
