"""Sidecar sampling: render previews with a LoRA a run saved, in a process of its own.

``python -m trainers.native.sidecar --run-dir RUN --folder epoch3 [--prompt P]... [--seed S]...``

Loads the base model named by the run's config copy (relative paths resolve against the folder of the source
config, as they did for the run), attaches the LoRA saved in ``RUN/<folder>`` for inference, renders the run's
``[studio]`` prompts x seeds (or the ones given) and writes ``samples/<folder name>_p<i>_s<seed>.png``
atomically, appending one ``sample`` event (source "sidecar", the folder's step and epoch) per image to the
run's events.jsonl. So diffusion-pipe runs, which render nothing while training, get sample grids too.
Progress lines start with ``sidecar: ``; a failure ends with one ``sidecar failed: <reason>`` line and exit 1.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import traceback
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from trainers.events import EventWriter, LogEvent, SampleEvent, load_all
from trainers.files import atomic_write_bytes
from trainers.native.families.base import SampleRequest
from trainers.native.sampling import SAMPLES_DIR, requests_for
from trainers.native.settings import load_run
from trainers.run_library import SIDECAR_FAILED, SIDECAR_PROGRESS, folder_position, saved_folders


@dataclass(frozen=True)
class SidecarJob:
    """What one sidecar call renders, read from the run folder before any model is loaded."""

    run_dir: Path
    folder: str  # relative to the run folder, as the runs library lists it
    step: int
    epoch: int
    model: dict  # the run's [model] table
    base: Path  # the folder relative config paths resolve against
    renders: list[tuple[int, str, SampleRequest]]  # (prompt index, file name in samples/, request)
    dataset: dict | None = None  # the run's dataset TOML (edit datasets: the previews' reference image)
    seed: int = 0


def source_folder(run_dir: Path, meta: dict) -> Path:
    """The folder of the run's source main TOML (relative paths in its copy mean paths from there); the run
    folder when the source is gone or unknown (adopted runs)."""
    base = meta.get("config_base")  # the folder chosen at start (trainers.config.paths_check.config_base)
    if isinstance(base, str) and base and Path(base).is_dir():
        return Path(base)
    source = meta.get("source_main")
    if source and Path(source).parent.is_dir():
        return Path(source).parent
    return run_dir


def sample_file(folder: str, prompt: str, seed: int, own_prompts: tuple[str, ...], position: int) -> tuple[int, str]:
    """(prompt index, file name): ``epoch3_p0_s42.png`` for the run's own prompt 0; a prompt typed for this
    render gets ``epoch3_x<hash>_s42.png``, so it never overwrites the picture of a different prompt."""
    name = Path(folder).name
    if prompt in own_prompts:
        index = own_prompts.index(prompt)
        return index, f"{name}_p{index}_s{seed}.png"
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
    return position, f"{name}_x{digest}_s{seed}.png"


def plan(run_dir: Path, folder: str, prompts: list[str] | None = None, seeds: list[int] | None = None) -> SidecarJob:
    """Check the request against the run folder and list the images to render."""
    run_dir = run_dir.resolve()
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no run.json)")
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    saved = saved_folders(run_dir, meta)
    if folder not in saved:
        raise ValueError(f"{folder!r} is not a saved LoRA folder of {run_dir.name}; saved: {', '.join(saved) or 'none'}")
    settings = load_run(run_dir)
    if "model" not in settings.config:
        raise KeyError(f"{settings.main_path} has no [model] table")
    studio = settings.studio
    studio = replace(studio, prompts=tuple(prompts) if prompts else studio.prompts,
                     seeds=tuple(seeds) if seeds else studio.seeds)
    if not studio.prompts:
        raise ValueError("no prompts: the run's [studio] sample_prompts is empty; type the prompts to render")
    own = settings.studio.prompts
    renders = []
    for position, request in requests_for(studio):
        index, name = sample_file(folder, request.prompt, request.seed, own, position)
        renders.append((index, name, request))
    step, epoch = folder_position(load_all(run_dir), folder)
    return SidecarJob(run_dir, folder, step, epoch, settings.config["model"], source_folder(run_dir, meta), renders,
                      settings.dataset, settings.seed)


def _say(message: str) -> None:
    print(f"{SIDECAR_PROGRESS}{message}", flush=True)


def load_model(job: SidecarJob):
    """The base model on the best device with the saved LoRA attached for inference."""
    from trainers.native.loop import load_family, pick_device  # torch: only once the request is known good

    os.chdir(job.base)  # config paths resolve against the source config's folder (families use the cwd)
    device = pick_device()
    _say(f"loading {job.model.get('type')} on {device}")
    family = load_family(job.model, device)
    attach = getattr(family, "attach_saved_lora", None)
    if attach is None:
        raise ValueError(f"[model] type = {job.model.get('type')!r} cannot load a saved LoRA for sampling yet")
    rank, _ = attach(job.run_dir / job.folder, trainable=False)
    if getattr(family, "edit_datasets", False) and job.dataset:  # Kontext: the training previews' reference image
        from trainers.native.data import first_control

        family.preview_control = first_control(job.dataset, job.seed, family.pixel_multiple)
    _say(f"{job.folder} attached (LoRA rank {rank})")
    return family


def render(job: SidecarJob, family, events: EventWriter) -> list[Path]:
    """Render every image of ``job``; each PNG is written atomically, then its event appended."""
    paths = []
    for done, (index, name, request) in enumerate(job.renders, start=1):
        (image,) = family.sample([request])
        rel = Path(SAMPLES_DIR) / name
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        atomic_write_bytes(job.run_dir / rel, buf.getvalue())
        events.emit(SampleEvent(step=job.step, epoch=job.epoch, path=rel.as_posix(), prompt=request.prompt,
                                seed=request.seed, index=index, source="sidecar"))
        paths.append(job.run_dir / rel)
        _say(f"{done}/{len(job.renders)} {rel.as_posix()}")
    events.emit(LogEvent(message=f"sidecar rendered {len(paths)} samples with {job.folder} (step {job.step})"))
    return paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    ap = argparse.ArgumentParser(prog="python -m trainers.native.sidecar", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, type=Path, help="run folder holding run.json")
    ap.add_argument("--folder", required=True, help="saved LoRA folder relative to the run folder, e.g. epoch3")
    ap.add_argument("--prompt", action="append", default=[], help="prompt to render (repeat; default: [studio])")
    ap.add_argument("--seed", action="append", type=int, default=[], help="seed (repeat; default: [studio])")
    return ap.parse_args(argv)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, FileNotFoundError | ValueError | KeyError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    """Render; returns the exit code (0 done, 1 failed with the reason on the last line)."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers\..*")
    job = None
    try:
        job = plan(args.run_dir, args.folder, args.prompt, args.seed)
        count = len(job.renders)
        _say(f"{count} image{'s' if count != 1 else ''} with {job.folder} (step {job.step}, epoch {job.epoch})")
        render(job, load_model(job), EventWriter(job.run_dir))
    except Exception as exc:  # noqa: BLE001 - every failure must end with one readable reason
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        if job is not None:
            EventWriter(job.run_dir).emit(LogEvent(level="warning", message=f"sidecar sampling of {job.folder} "
                                                   f"failed: {_reason(exc)}"))
        print(f"{SIDECAR_FAILED}{_reason(exc)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
