"""The native training loop: load, attach the LoRA, cache, train, sample, save; events all along.

Stop rules, save names and schedule follow diffusion-pipe: ``epochs`` and ``max_steps`` (whichever comes
first), ``epoch<N>/`` or ``step<N>/`` saves, and a final save unless the last step was just saved.
Commands (stop, save, sample) are taken at every optimizer-step boundary.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import random
import time

import numpy as np
import torch

from trainers.commands import Command, take_commands
from trainers.events import CheckpointEvent, EventWriter, LogEvent, PhaseEvent, StepEvent
from trainers.native import cache as cache_mod
from trainers.native.data import scan_dataset
from trainers.native.families.base import Family, dtype_of
from trainers.native.flow import LossConfig, TimestepConfig, flow_loss, noisy_input, sample_timesteps
from trainers.native.lora_io import adapter_config, adapter_settings, attach_lora, lora_state_dict, save_lora
from trainers.native.optim import build_optimizer, lr_at, set_lr
from trainers.native.sampling import render_samples
from trainers.native.settings import RunSettings, check_supported

log = logging.getLogger(__name__)

FAMILIES = {"chroma": "trainers.native.families.chroma:ChromaFamily"}


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""


def load_family(model: dict, device: torch.device) -> Family:
    """Instantiate the family named by ``[model] type``."""
    kind = model.get("type")
    if kind not in FAMILIES:
        raise ValueError(f"[model] type = {kind!r} is not supported by the native trainer yet; "
                         f"supported: {', '.join(FAMILIES)} (use the diffusion-pipe backend for the others)")
    module, cls = FAMILIES[kind].split(":")
    return getattr(importlib.import_module(module), cls).load(model, device)


def pick_device() -> torch.device:
    """CUDA when present, else the CPU (with every core it may use)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator used for noise and timesteps."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator(device="cpu").manual_seed(seed)


class Trainer:
    """One native run, from loading to the final save. ``run()`` returns the finish reason."""

    def __init__(self, settings: RunSettings, events: EventWriter):
        self.s, self.events = settings, events
        self.step, self.epoch = 0, 1
        self.phase = "starting"
        self.stop_requested = False
        self.last_saved_step = self.last_sampled_step = -1
        self.step_seconds: float | None = None
        model = settings.config.get("model", {})
        self.tcfg = TimestepConfig.from_model_table(model)
        self.loss_cfg = LossConfig.from_config(settings.config)
        self.save_dtype = dtype_of(settings.config["save_dtype"], "save_dtype") \
            if "save_dtype" in settings.config else None

    def request_stop(self) -> None:
        """Stop at the next step boundary (what a ``stop`` command does)."""
        self.stop_requested = True

    # ----- set-up -------------------------------------------------------------------------------------
    def _set_phase(self, phase: str, message: str = "", total: int | None = None) -> None:
        if phase != self.phase or message:
            self.phase = phase
            self.events.emit(PhaseEvent(phase=phase, message=message, total=total))

    def _log(self, message: str, level: str = "info") -> None:
        print(message, flush=True)
        self.events.emit(LogEvent(level=level, message=message))

    def setup(self) -> None:
        """Load the model, attach the LoRA, cache the dataset, build the optimizer."""
        self.device = pick_device()
        self.generator = seed_everything(self.s.seed)
        self.rng = random.Random(self.s.seed)
        config = self.s.config
        for warning in check_supported(config):
            self._log(warning, "warning")
        self._set_phase("loading", f"loading {config['model'].get('type')} on {self.device}")
        started = time.time()
        self.family = load_family(config["model"], self.device)
        self._attach_adapter(config)
        self._log(f"model loaded in {time.time() - started:.1f} s")
        self._cache_dataset()
        self._plan()
        self.optimizer = build_optimizer(self.params, config.get("optimizer", {}))
        self.base_lr = float(config.get("force_constant_lr", config["optimizer"]["lr"]))

    def _attach_adapter(self, config: dict) -> None:
        table = config.get("adapter")
        if not table:
            raise ValueError("the native trainer trains LoRAs only: add an [adapter] table (type = 'lora')")
        self.rank, self.dropout = adapter_settings(table)
        dtype = dtype_of(table.get("dtype", config["model"]["dtype"]), "[adapter] dtype")
        self.params = attach_lora(self.family.transformer, self.family.lora_targets(), self.rank, self.dropout,
                                  dtype, table.get("exclude_modules"))
        self.family.transformer.train()
        trainable = sum(p.numel() for _, p in self.params)
        total = sum(p.numel() for p in self.family.transformer.parameters())
        self._log(f"trainable params: {trainable:,} || all params: {total:,} || "
                  f"trainable%: {100 * trainable / total:.4f} (LoRA rank {self.rank}, alpha = rank)")

    def _cache_dataset(self) -> None:
        items = scan_dataset(self.s.dataset, self.s.seed)
        self._set_phase("caching", f"encoding {len(items)} examples", total=len(items))
        started = time.time()
        self.cache = cache_mod.build_cache(self.family, items, self.s.seed)
        sizes = ", ".join(f"{b.size[0]}x{b.size[1]}: {len(b.text_rows)}" for b in self.cache.buckets)
        self._log(f"cached {len(items)} examples in {time.time() - started:.1f} s (buckets {sizes})")

    def _plan(self) -> None:
        s = self.s
        self.steps_per_epoch = cache_mod.steps_per_epoch(self.cache, s.global_batch)
        if self.steps_per_epoch == 0:
            raise RuntimeError(f"Processed dataset was empty: every bucket has fewer examples than the global "
                               f"batch size ({s.global_batch}); lower micro_batch_size_per_gpu or add images")
        self.schedule_steps = s.epochs * self.steps_per_epoch
        self.total_steps = min(self.schedule_steps, s.max_steps) if s.max_steps else self.schedule_steps
        self.save_steps = s.save_every_n_steps
        if s.save_every_n_examples:  # diffusion-pipe: examples // global batch size
            self.save_steps = max(1, s.save_every_n_examples // s.global_batch)
        self._log(f"Global batch size = {s.global_batch}; {self.steps_per_epoch} steps per epoch, "
                  f"{self.total_steps} steps in all")

    # ----- training -----------------------------------------------------------------------------------
    def run(self) -> str:
        """Train until ``epochs`` or ``max_steps`` or a stop; returns "completed" or "stopped"."""
        self.setup()
        self._set_phase("training", f"{self.total_steps} steps", total=self.total_steps)
        if self.s.studio.at_start:
            self.sample_now()
        reason = self._train()
        self._set_phase("finished", reason)
        return reason

    def _train(self) -> str:
        for epoch in range(1, self.s.epochs + 1):
            self.epoch = epoch
            for micro_batches in cache_mod.epoch_batches(self.cache, self.s.micro_batch, self.s.grad_accum,
                                                         self.s.seed, epoch):
                if self._handle_commands():
                    return "stopped"
                self._set_phase("training", total=self.total_steps)
                self._optimizer_step(micro_batches)
                self._after_step()
                if self.s.max_steps and self.step >= self.s.max_steps:
                    self._finish(f"step{self.step}")
                    return "completed"
            if self.s.save_every_n_epochs and epoch % self.s.save_every_n_epochs == 0:
                self.save_now(f"epoch{epoch}")
        self._finish(f"epoch{self.epoch}")
        return "completed"

    def _optimizer_step(self, micro_batches: list[cache_mod.Batch]) -> None:
        started = time.time()
        lr = lr_at(self.step, self.base_lr, self.s.warmup_steps, self.s.lr_scheduler, self.schedule_steps)
        if "force_constant_lr" in self.s.config:
            lr = self.base_lr
        set_lr(self.optimizer, lr)
        loss_sum = 0.0
        for batch in micro_batches:
            loss = self._micro_batch_loss(batch) / len(micro_batches)
            loss.backward()
            loss_sum += loss.item()
        if not math.isfinite(loss_sum):
            self._log(f"loss is {loss_sum} at step {self.step + 1}: stopping", "warning")
            raise NonFiniteLoss(f"non-finite loss ({loss_sum}) at step {self.step + 1}; try a lower learning rate")
        grad_norm = None
        if self.s.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in self.params], self.s.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._emit_step(loss_sum, lr, grad_norm, time.time() - started)

    def _micro_batch_loss(self, batch: cache_mod.Batch) -> torch.Tensor:
        x0, text = cache_mod.batch_tensors(self.cache, batch, self.s.uncond_fraction, self.rng)
        x0 = x0.to(self.device, self.family.dtype)
        t = sample_timesteps(self.tcfg, x0.shape[0], self.family.image_seq_len(x0.shape), self.generator)
        noise = torch.randn(x0.shape, generator=self.generator).to(self.device, x0.dtype)
        x_t, target = noisy_input(x0, noise, t.to(self.device))
        return flow_loss(self.family.predict(x_t, t.to(self.device), text), target, self.loss_cfg)

    def _emit_step(self, loss: float, lr: float, grad_norm: float | None, seconds: float) -> None:
        ema = self.step_seconds
        self.step_seconds = seconds if ema is None else 0.8 * ema + 0.2 * seconds
        it_per_s = 1.0 / max(self.step_seconds, 1e-9)
        self.events.emit(StepEvent(
            step=self.step, epoch=self.epoch, loss=loss, lr=lr, it_per_s=it_per_s,
            samples_per_s=it_per_s * self.s.global_batch, total_steps=self.total_steps,
            eta_s=(self.total_steps - self.step) * self.step_seconds, grad_norm=grad_norm))
        print(f"steps: {self.step} loss: {loss:.4f} iter time (s): {seconds:.3f} lr: {lr:.3g}", flush=True)

    def _after_step(self) -> None:
        if self.save_steps and self.step % self.save_steps == 0:
            self.save_now(f"step{self.step}")
        every = self.s.studio.every_n_steps
        if every and self.step % every == 0:
            self.sample_now()

    def _handle_commands(self) -> bool:
        """Take waiting commands; True when the run must stop now (after saving the LoRA)."""
        commands = take_commands(self.s.run_dir)
        if commands:
            self._log(f"command received: {', '.join(sorted(c.value for c in commands))}")
        if Command.SAVE in commands:
            self.save_now(f"step{self.step}")
        if Command.SAMPLE in commands:
            self.sample_now(force=True)
        if Command.STOP in commands or self.stop_requested:
            if self.last_saved_step != self.step:
                self.save_now(f"step{self.step}")
            return True
        return False

    def _finish(self, name: str) -> None:
        if self.last_saved_step != self.step:
            self.save_now(name)
        if self.s.studio.every_n_steps and self.last_sampled_step != self.step:
            self.sample_now()

    # ----- outputs ------------------------------------------------------------------------------------
    def sample_now(self, force: bool = False) -> None:
        """Render the ``[studio]`` previews at the current step (if any prompts are set)."""
        if not self.s.studio.prompts or (self.last_sampled_step == self.step and not force):
            return
        self._set_phase("sampling", f"step {self.step}")
        started = time.time()
        paths = render_samples(self.family, self.s.studio, self.s.run_dir, self.step, self.epoch, self.events)
        self.last_sampled_step = self.step
        print(f"sampled {len(paths)} previews in {time.time() - started:.2f} s", flush=True)

    def save_now(self, name: str) -> None:
        """Save the LoRA into ``<run dir>/<name>/`` in diffusion-pipe's layout."""
        self._set_phase("saving", name)
        tensors, extra = self.family.export_lora(lora_state_dict(self.family.transformer))
        save_lora(self.s.run_dir / name, tensors, adapter_config(self.rank, self.dropout, extra),
                  self.s.main_path, self.save_dtype)
        self.events.emit(CheckpointEvent(step=self.step, epoch=self.epoch, path=name, what="lora"))
        self.last_saved_step = self.step
        print(f"Saving model to directory {name}", flush=True)
