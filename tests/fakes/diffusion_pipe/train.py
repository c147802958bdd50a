"""A fake diffusion-pipe ``train.py`` for dp-studio's tests (our own code; see README.md).

Resolves config paths against its working directory, as diffusion-pipe does, so a launch copy with relative paths
fails here exactly as it would there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

STEP_S = float(os.environ.get("FAKE_DP_STEP_S", "0.05"))
MODE = os.environ.get("FAKE_DP_MODE", "")


def say(text: str, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def bar(desc: str, total: int) -> None:
    for done in range(total + 1):
        pct = done * 100 // total
        fill = "#" * (pct // 10)
        sys.stderr.write(f"\r{desc}: {pct:3d}%|{fill:<10}| {done}/{total} [00:00<00:00, 99.0it/s]")
        sys.stderr.flush()
    sys.stderr.write("\n")


def count_images(dataset: dict) -> int:
    total = 0
    for directory in dataset.get("directory", []):
        folder = Path(directory["path"])  # relative paths resolve against the cwd (the checkout)
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset directory not found: {folder.resolve()}")
        images = [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]
        total += len(images) * int(directory.get("num_repeats", dataset.get("num_repeats", 1)))
    return total


def run_folder(config: dict, resume) -> Path:
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        return out / resume if isinstance(resume, str) else sorted(out.iterdir())[-1]
    folder = out / datetime.now(UTC).strftime("%Y%m%d_%H-%M-%S")
    folder.mkdir()
    return folder


def lora_file() -> bytes:
    """A small rank-4 Chroma LoRA in diffusion-pipe's layout (two modules at the released model's shapes, zero
    fp16 weights); ``FAKE_DP_MODE=bad_lora`` adds a module Chroma does not have."""
    modules = {"double_blocks.0.img_attn.proj": (3072, 3072), "single_blocks.0.linear2": (3072, 15360)}
    if MODE == "bad_lora":
        modules["double_blocks.0.img_attn.qkvv"] = (9216, 3072)
    header, offset = {}, 0
    for module, (out, inp) in modules.items():
        for key, shape in ((f"diffusion_model.{module}.lora_A.weight", [4, inp]),
                           (f"diffusion_model.{module}.lora_B.weight", [out, 4])):
            size = 2 * shape[0] * shape[1]
            header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + bytes(offset)


def save_lora(run_dir: Path, name: str, config_path: Path) -> None:
    say(f"Saving model to directory {name}")
    target = run_dir / name
    (target / "tmp").mkdir(parents=True, exist_ok=True)
    time.sleep(STEP_S)
    (target / "adapter_model.safetensors").write_bytes(lora_file())
    (target / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 4}')
    shutil.copy(config_path, target / config_path.name)
    shutil.rmtree(target / "tmp")


def save_state(run_dir: Path, step: int) -> None:
    tag = f"global_step{step}"
    (run_dir / tag).mkdir(exist_ok=True)
    (run_dir / tag / "mp_rank_00_model_states.pt").write_bytes(b"fake")
    (run_dir / "latest").write_text(tag)


def signals(run_dir: Path, step: int) -> None:
    if (run_dir / "save").exists():
        save_state(run_dir, step)
        (run_dir / "save").unlink()
    if (run_dir / "save_quit").exists() and MODE != "hang":
        save_state(run_dir, step)
        (run_dir / "save_quit").unlink()
        say("Manually quitting")
        sys.exit(0)


def one_step(step: int, lr: float) -> None:
    time.sleep(STEP_S)
    if MODE == "traceback" and step == 2:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
    loss = float("nan") if MODE == "nan" and step >= 2 else 0.5 * math.exp(-step / 20)
    lr_line = (f"[2026-07-30 09:16:29,681] [INFO] [logging.py:128:log_dist] [Rank 0] step={step}, skipped=0, "
               f"lr=[{lr:g}], mom=[0.0]")
    steps_line = f"steps: {step} loss: {loss:.4f} iter time (s): {STEP_S:.3f} samples/sec: {1 / STEP_S:.3f}"
    for line in ([steps_line, lr_line] if os.environ.get("FAKE_DP_LR_AFTER") else [lr_line, steps_line]):
        say(line)


def train(config: dict, config_path: Path, run_dir: Path, per_epoch: int, step: int = 1) -> None:
    epochs, max_steps = int(config["epochs"]), config.get("max_steps")
    save_every = config.get("save_every_n_epochs")
    base_lr = float(config.get("optimizer", {}).get("lr", 1e-4))
    epoch = (step - 1) // per_epoch + 1
    if step > 1:
        say(f"Resuming training from checkpoint. Resuming at epoch: {epoch}, step: {step}")
    while True:
        one_step(step, base_lr * min(1.0, step / max(1, config.get("warmup_steps", 1))))
        if step % per_epoch == 0:
            if save_every and epoch % save_every == 0:
                save_lora(run_dir, f"epoch{epoch}", config_path)
            if epoch == epochs:
                break
            epoch += 1
            say(f"Started new epoch: {epoch}")
        if max_steps and step >= max_steps:
            save_lora(run_dir, f"step{step}", config_path)
            break
        signals(run_dir, step)
        step += 1
    save_state(run_dir, step)
    say("TRAINING COMPLETE!")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deepspeed", action="store_true")
    ap.add_argument("--config", required=True)
    ap.add_argument("--resume_from_checkpoint", nargs="?", const=True, default=None)
    ap.add_argument("--master_port", type=int, default=29500)
    ap.add_argument("--local_rank", type=int, default=-1)
    args = ap.parse_args()
    config_path = Path(args.config)
    config = tomllib.loads(config_path.read_text())
    dataset_path = Path(config["dataset"])
    dataset = tomllib.loads(dataset_path.read_text())
    say("[2026-07-30 09:15:00,000] [INFO] [real_accelerator.py:260:get_accelerator] Setting ds_accelerator to cuda")
    images = count_images(dataset)
    say(f"caching latents: {dataset['directory'][0]['path']}")
    bar("Map (num_proc=2)", images)
    say("[CACHE] text embeddings: 0 new, all cached")
    run_dir = run_folder(config, args.resume_from_checkpoint)
    if not args.resume_from_checkpoint:
        shutil.copy(config_path, run_dir / config_path.name)
        shutil.copy(dataset_path, run_dir / dataset_path.name)
    gbs = int(config.get("micro_batch_size_per_gpu", 1)) * int(config.get("gradient_accumulation_steps", 1))
    say(f"Global batch size = {gbs}")
    if MODE == "leak":  # a careless library printing the key: dp-studio must mask it everywhere
        say(f"wandb: using key {os.environ.get('WANDB_API_KEY', '<none>')}")
    start = 1
    if args.resume_from_checkpoint:
        start = int((run_dir / "latest").read_text().removeprefix("global_step")) + 1
    train(config, config_path, run_dir, max(1, math.ceil(images / gbs)), start)


if __name__ == "__main__":
    main()
