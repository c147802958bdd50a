"""A fake diffusion-pipe ``train.py`` for dp-studio's tests (our own code; see README.md): it prints only lines
diffusion-pipe (HEAD 8f83dbf) and DeepSpeed 0.19.8 print, in their order (tests/golden/dp_logs cites the statement
behind each; tests/integration/test_dp_fake_output.py holds this file to them), emulates the cache, TensorBoard
scalars, saves, checkpoints and the ``save``/``save_quit`` files, and resolves paths against its working directory.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

STEP_S = float(os.environ.get("FAKE_DP_STEP_S", "0.05"))
MODE = os.environ.get("FAKE_DP_MODE", "")
QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # train.py:39 TIMESTEP_QUANTILES_FOR_EVAL


def say(text: str) -> None:
    print(text, flush=True)


def log(where: str, message: str, level: str = "INFO") -> None:
    """A DeepSpeed logger line (deepspeed/utils/logging.py:39)."""
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    say(f"[{stamp}] [{level}] [{where}] {message}")


def log_dist(message: str) -> None:
    log("logging.py:123:log_dist", f"[Rank 0] {message}")


def bar(total: int, desc: str = "", first_extra: str = "") -> None:
    """A tqdm bar on stderr: '\\r' before each update, '\\n' when closed; ``first_extra`` follows the 0% state (a
    print made while the bar is open)."""
    prefix = f"{desc}: " if desc else ""
    for done in range(total + 1):
        pct = done * 100 // total
        fill = ("█" * (pct // 10)).ljust(10)
        sys.stderr.write(f"\r{prefix}{pct:3d}%|{fill}| {done}/{total} [00:00<00:00, 99.00it/s]")
        sys.stderr.flush()
        if done == 0 and first_extra:
            say(first_extra)
    sys.stderr.write("\n")
    sys.stderr.flush()


# ---- datasets and the cache (utils/dataset.py, utils/cache.py) -----------------------------------
class Folder:
    """One [[directory]]: its images, resolutions and the fake cache record."""

    def __init__(self, directory: dict, dataset: dict, model_type: str):
        self.path = Path(directory["path"])  # relative paths resolve against the cwd (the checkout)
        if not self.path.is_dir():
            raise RuntimeError(f"Invalid path: {self.path}")
        self.files = sorted(p for p in self.path.iterdir() if p.is_file())
        self.images = [p for p in self.files if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]
        assert self.images, f"Directory {self.path} had no images/videos!"  # utils/dataset.py:673
        self.repeats = int(directory.get("num_repeats", dataset.get("num_repeats", 1)))
        self.resolutions = directory.get("resolutions", dataset.get("resolutions", []))
        self.record_file = self.path / "cache" / model_type / "fake_cache.json"

    def record(self) -> dict:
        return json.loads(self.record_file.read_text()) if self.record_file.is_file() else {}

    def cache(self, kind: str, length: int, regenerate: bool, fresh_pass: bool) -> None:
        """_map_and_cache (utils/dataset.py:85-161) around Cache.init (utils/cache.py:39-66)."""
        record = self.record()
        fingerprint = hashlib.md5(f"{self.path.resolve()}|{kind}|{length}".encode()).hexdigest()[:16]

        def init(existing: dict | None) -> int:
            say("[CACHE] Initializing")
            if existing:
                say(f"[CACHE] Existing cache has fingerprint {existing['fingerprint']}")
                if existing["fingerprint"] != fingerprint:
                    say("[CACHE] Fingerprint changed, deleting existing cache files")
                    return init(None)
            else:
                say(f"[CACHE] Storing new fingerprint: {fingerprint}")
            size = existing["length"] if existing else 0
            say(f"[CACHE] Existing cache length: {size}")
            return size

        size = init(record.get(kind))
        if not fresh_pass:
            return
        if regenerate:
            size = init(None)  # cache.clear() runs init() again
        if size == length:
            return
        bar(length, first_extra="[CACHE] Creating new shard: shard_0")
        record[kind] = {"fingerprint": fingerprint, "length": length}
        self.record_file.parent.mkdir(parents=True, exist_ok=True)
        self.record_file.write_text(json.dumps(record))

    def metadata(self, fresh_pass: bool) -> None:
        if fresh_pass:
            say("Grouped metadata is not cached. Computing ungrouped metadata and then grouping.")
            say("Intermediate metadata is not cached. Enumerating all files.")
            bar(len(self.files))
            say("Saving intermediate metadata dataset.")
            say("Loading intermediate metadata dataset.")
            say("Caching ungrouped metadata.")
            bar(len(self.images), "Grouping examples")
            say("Loading grouped metadata with grouping key (1.0, 1)")
        else:
            say("Found grouped metadata cache. Directly loading it.")
            say("Loading grouped metadata with grouping key [1.0, 1]")

    def latents(self, regenerate: bool, fresh_pass: bool) -> None:
        key = "(1.0, 1)" if fresh_pass else "[1.0, 1]"
        say(f"caching latents: {self.path}")
        say(f"caching latents: {key}")
        for res in self.resolutions:
            side = round(res / 16) * 16
            say(f"caching latents: (1.0, {side}, {side}, 1)")
            self.cache(f"latents_{side}", len(self.images), regenerate, fresh_pass)
            if fresh_pass:
                say("Building iteration order")

    def text_embeddings(self, regenerate: bool, fresh_pass: bool) -> None:
        say(f"caching text embeddings: {self.path}")
        say(f"caching text embeddings: {'(1.0, 1)' if fresh_pass else '[1.0, 1]'}")
        self.cache("text_embeddings_1", len(self.images), regenerate, fresh_pass)
        self.cache("uncond_text_embeddings_1", 1, regenerate, fresh_pass)

    def batches(self, batch: int) -> int:
        """Each resolution is one size bucket, cut to a multiple of the global batch (utils/dataset.py:392-396)."""
        return sum(len(self.images) * self.repeats // batch for _ in self.resolutions)


def cache_all(sets: list[list[Folder]], regenerate: bool) -> None:
    """DatasetManager.cache (utils/dataset.py:1167-1226): the caching process (metadata, latents, text embeddings of
    every dataset in turn), then each dataset loaded from the cache."""
    every = [folder for folders in sets for folder in folders]
    for folder in every:
        folder.metadata(True)
    for folder in every:
        folder.latents(regenerate, True)
    for folder in every:
        folder.text_embeddings(regenerate, True)
    for folder in every:
        folder.metadata(False)
        folder.latents(False, False)
        folder.text_embeddings(False, False)


def folders_of(dataset_file: Path, model_type: str, skip_validation: bool) -> list[Folder]:
    dataset = tomllib.loads(dataset_file.read_text())
    for directory in dataset.get("directory", []):
        if len(directory.get("resolutions", dataset.get("resolutions", []))) > 3 and not skip_validation:
            say("WARNING: You have set a lot of resolutions in the dataset config. Please read the comments in the "
                "example dataset.toml file, and make sure you understand what this setting does. If you still want "
                "to proceed with the current configuration, run the script with the --i_know_what_i_am_doing flag.")
            sys.exit(0)  # quit()
    return [Folder(d, dataset, model_type) for d in dataset.get("directory", [])]


# ---- training (train.py, utils/saver.py, DeepSpeed's engines) -----------------------------------------------------
class Board:
    """diffusion-pipe's SummaryWriter(log_dir=run_dir) (train.py:904), flushed after each write here."""

    def __init__(self, run_dir: Path):
        self.writer = EventFileWriter(str(run_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.writer.flush()


def lr_for(config: dict, step: int, steps_per_epoch: int) -> float:
    """The lr of optimizer step ``step`` under train.py:849-862's schedulers (warmup, then constant/linear/cosine)."""
    base, warmup = float(config["optimizer"]["lr"]), int(config.get("warmup_steps", 0))
    if "force_constant_lr" in config:
        return float(config["force_constant_lr"])
    if warmup and step <= warmup:
        return base * (1 / warmup + (1 - 1 / warmup) * (step - 1) / warmup)
    k, total = step - warmup - 1, int(config["epochs"]) * steps_per_epoch
    kind = config.get("lr_scheduler", "constant")
    if kind == "linear":
        return base * max(0.0, 1 - k / total)
    if kind == "cosine":
        return 1e-6 + (base - 1e-6) * (1 + math.cos(math.pi * k / total)) / 2
    return base


class Trainer:
    def __init__(self, args, config: dict, run_dir: Path, eval_sets: dict[str, int], per_epoch: int, gbs: int):
        self.args, self.config, self.run_dir, self.eval_sets = args, config, run_dir, eval_sets
        self.per_epoch, self.gbs = per_epoch, gbs
        self.board = Board(run_dir)
        optimizer = config["optimizer"]
        self.release = bool(optimizer.get("gradient_release"))
        self.mom = optimizer.get("betas") or (0.9, 0.99)  # optimi's AdamW default betas

    def report(self, step: int) -> None:
        """DeepSpeed's progress line after the scheduler step (runtime/engine.py:3545-3555), then train_batch's."""
        time.sleep(STEP_S)
        if MODE == "traceback" and step == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        nxt = lr_for(self.config, step + 1, self.per_epoch)
        if self.release:  # train.py:703-707
            log_dist(f"step={step}, skipped=0, lr={nxt}, mom={self.mom}")
        else:
            log_dist(f"step={step}, skipped=0, lr={[nxt]}, mom={[self.mom]}")
        loss = float("nan") if MODE == "nan" and step >= 2 else 0.5 * math.exp(-step / 20)
        say(f"steps: {step} loss: {loss:0.4f} iter time (s): {STEP_S:0.3f} samples/sec: {self.gbs / max(STEP_S, 1e-3):0.3f}")
        self.board.scalar("train/loss", loss, step)

    def evaluate(self, x: int) -> None:
        """train.py:196-227: 'Running eval', one bar over every set's batches x 9 quantiles, TensorBoard scalars."""
        if not self.eval_sets:
            return
        say("Running eval")
        bar(sum(self.eval_sets.values()) * len(QUANTILES))
        for name in self.eval_sets:
            losses = [0.3 + 0.1 * q - 0.001 * x for q in QUANTILES]
            for q, loss in zip(QUANTILES, losses, strict=True):
                self.board.scalar(f"{name}/loss_quantile_{q:.2f}", loss, x)
            self.board.scalar(f"{name}/loss", sum(losses) / len(losses), x)
        self.board.scalar("eval/eval_time_sec", STEP_S, x)

    def save_model(self, name: str) -> None:
        """utils/saver.py:110-116 with save_adapter's tmp folder (:58-85)."""
        say(f"Saving model to directory {name}")
        target = self.run_dir / name
        (target / "tmp").mkdir(parents=True, exist_ok=True)
        time.sleep(STEP_S)
        (target / "adapter_model.safetensors").write_bytes(lora_file())
        (target / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 4}')
        shutil.copy(self.args.config, target / Path(self.args.config).name)
        shutil.rmtree(target / "tmp")

    def save_checkpoint(self, step: int, epoch: int) -> None:
        """DeepSpeed's save_checkpoint (runtime/engine.py:4869-4966) with diffusion-pipe's client state."""
        tag = f"global_step{step}"
        log_dist(f"[Torch] Checkpoint {tag} is about to be saved!")
        path = self.run_dir / tag / "mp_rank_00_model_states.pt"
        log_dist(f"Saving model checkpoint: {path}")
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"step": step, "epoch": epoch}))
        (self.run_dir / "latest").write_text(tag)

    def process_step(self, step: int, epoch: int) -> tuple[bool, bool]:
        """utils/saver.py:146-177: signal files, save_every_n_steps, checkpoints, 'Manually quitting'."""
        save, quit_ = self.run_dir / "save", self.run_dir / "save_quit"
        manual, stop = save.is_file(), False
        if manual:
            save.unlink()
        elif quit_.is_file() and MODE != "hang":
            manual = stop = True
            quit_.unlink()
        saved = bool(self.config.get("save_every_n_steps")) and step % self.config["save_every_n_steps"] == 0
        if saved:
            self.save_model(f"step{step}")
        if manual:
            self.save_checkpoint(step, epoch)
        if stop:
            say("Manually quitting")
            sys.exit()
        return manual, saved

    def run(self, step: int, epoch: int) -> None:
        """train.py:908-974."""
        c = self.config
        if c.get("eval_before_first_step", True) and step == 1:
            self.evaluate(0)
        while True:
            self.report(step)
            finished = step % self.per_epoch == 0
            checkpointed = saved = False
            if finished:  # utils/saver.py:130-144
                saved = bool(c.get("save_every_n_epochs")) and epoch % c["save_every_n_epochs"] == 0
                if saved:
                    self.save_model(f"epoch{epoch}")
                if epoch + 1 <= int(c["epochs"]):
                    say(f"Started new epoch: {epoch + 1}")
            every_steps, every_epochs = c.get("eval_every_n_steps"), c.get("eval_every_n_epochs")
            if (every_steps and step % every_steps == 0) or (finished and every_epochs and epoch % every_epochs == 0):
                self.evaluate(step)
            if finished:
                if epoch == int(c["epochs"]):
                    final = f"epoch{epoch}"
                    break
                epoch += 1
            checkpointed, saved = self.process_step(step, epoch)
            if "max_steps" in c and step >= c["max_steps"]:
                final = f"step{step}"
                break
            step += 1
        if not checkpointed:
            self.save_checkpoint(step, epoch + (1 if final.startswith("epoch") else 0))
        if not saved:
            self.save_model(final)
        say("TRAINING COMPLETE!")


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


def parse_args() -> argparse.Namespace:
    """train.py:41-57's flags (DeepSpeed adds --deepspeed)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--deepspeed", action="store_true")
    ap.add_argument("--config", required=True)
    ap.add_argument("--local_rank", type=int, default=-1)
    ap.add_argument("--resume_from_checkpoint", nargs="?", const=True, default=None)
    for flag in ("reset_dataloader", "reset_optimizer", "reset_optimizer_params", "regenerate_cache", "cache_only",
                 "trust_cache", "i_know_what_i_am_doing"):
        ap.add_argument(f"--{flag}", action="store_true")
    ap.add_argument("--master_port", type=int, default=29500)
    return ap.parse_args()


def start_engine(config: dict, gbs: int) -> None:
    """deepspeed.initialize (train.py:623) and _configure_optimizer (train.py:817): a few of their INFO lines."""
    mbs, gas = int(config.get("micro_batch_size_per_gpu", 1)), int(config.get("gradient_accumulation_steps", 1))
    # The pipeline module's partition report (DeepSpeed runtime/pipe/module.py:401-443) of Chroma's layer list.
    layers = ["InitialLayer", *["TransformerWrapper"] * 19, "concatenate_hidden_states",
              *["SingleTransformerWrapper"] * 38, "FinalLayer"]
    log("module.py:401:_partition_layers", "Partitioning pipeline stages with method parameters")
    say(f"stage=0 layers={len(layers)}\n" + "\n".join(f"    {i:2d}: {name}" for i, name in enumerate(layers)))
    say("  loss: loss_fn")
    log_dist("DeepSpeed info: version=0.19.8, git-hash=unknown, git-branch=unknown")
    log("engine.py:98:__init__", f"CONFIG: micro_batches={gas} micro_batch_size={mbs}")
    log("engine.py:139:__init__", "is_pipe_partitioned= False is_grad_partitioned= False")
    log("engine.py:158:__init__", f"RANK=0 STAGE=0 LAYERS={len(layers)} [0, {len(layers)}) STAGE_PARAMS=9437184 (9.437M) "
                                  "TOTAL_PARAMS=9437184 (9.437M) UNIQUE_PARAMS=9437184 (9.437M)")
    say(f"Global batch size = {gbs}")
    kind = str(config["optimizer"]["type"]).lower()
    name = "AdamW" if kind in ("adamw", "adamw_optimi", "adamw8bit") else config["optimizer"]["type"]
    log_dist("Using client callable to create basic optimizer")
    log_dist(f"DeepSpeed Basic Optimizer = {name}")
    log_dist(f"DeepSpeed Final Optimizer = {name}")


def main() -> None:
    args = parse_args()
    config = tomllib.loads(Path(args.config).read_text())
    model_type = config["model"]["type"]
    log("real_accelerator.py:263:get_accelerator", "Setting ds_accelerator to cuda (auto detect)")
    train = folders_of(Path(config["dataset"]), model_type, args.i_know_what_i_am_doing)
    evals = {e["name"]: folders_of(Path(e["config"]), model_type, args.i_know_what_i_am_doing)
             for e in config.get("eval_datasets", [])}
    cache_all([train, *evals.values()], args.regenerate_cache)
    if args.cache_only:
        return
    mbs, gas = int(config.get("micro_batch_size_per_gpu", 1)), int(config.get("gradient_accumulation_steps", 1))
    gbs = mbs * gas
    per_epoch = sum(f.batches(gbs) for f in train)
    eval_gbs = int(config.get("eval_micro_batch_size_per_gpu", mbs)) * int(config.get("eval_gradient_accumulation_steps", 1))
    eval_sets = {name: sum(f.batches(eval_gbs) for f in folders) for name, folders in evals.items()}
    if per_epoch == 0 or 0 in eval_sets.values():
        raise RuntimeError("Processed dataset was empty. Probably caused by rounding down for each size bucket.")
    out, resume = Path(config["output_dir"]), args.resume_from_checkpoint  # train.py:540-549
    run_dir = (out / resume if isinstance(resume, str) else sorted(out.iterdir())[-1]) if resume else (
        out / datetime.now(UTC).strftime("%Y%m%d_%H-%M-%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume_from_checkpoint:  # train.py:553-557
        shutil.copy(args.config, run_dir)
        shutil.copy(config["dataset"], run_dir)
    start_engine(config, gbs)
    if MODE == "leak":  # fault injection: a careless library printing the key; dp-studio must mask it everywhere
        say(f"wandb: using key {os.environ.get('WANDB_API_KEY', '<none>')}")
    step, epoch = 1, 1
    if args.resume_from_checkpoint:
        state = json.loads((run_dir / (run_dir / "latest").read_text() / "mp_rank_00_model_states.pt").read_text())
        step, epoch = state["step"] + 1, state["epoch"]
        say(f"Resuming training from checkpoint. Resuming at epoch: {epoch}, step: {step}")
    Trainer(args, config, run_dir, eval_sets, per_epoch, gbs).run(step, epoch)


if __name__ == "__main__":
    main()
