"""The native training loop: load, attach the LoRA, cache, train, sample, save; events all along.

Stop rules, save names and schedule follow diffusion-pipe: ``epochs`` and ``max_steps`` (whichever comes
first), ``epoch<N>/`` or ``step<N>/`` saves, and a final save unless the last step was just saved.
Commands (stop, save, sample) are taken at every optimizer-step boundary.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from trainers.checkpoints import STATE_PREFIX, room_for, space_warning
from trainers.commands import Command, take_commands
from trainers.config.registry import NATIVE_FAMILIES
from trainers.events import CheckpointEvent, EvalEvent, EventWriter, LogEvent, PhaseEvent, StepEvent
from trainers.lora_check import base_model_value
from trainers.lora_check import log_line as lora_log_line
from trainers.native import cache as cache_mod
from trainers.native import state as state_mod
from trainers.native.data import scan_dataset, subsample_ratio
from trainers.native.divergence import DivergenceGuard
from trainers.native.evaluate import EvalSet, eval_sets_from_config, evaluate
from trainers.native.families.base import Family, dtype_of
from trainers.native.flow import (
    LossConfig,
    TimestepConfig,
    flow_loss,
    latent_mask,
    noisy_input,
    sample_timesteps,
)
from trainers.native.lora_io import (
    adapter_config,
    adapter_settings,
    lora_state_dict,
    save_lora,
)
from trainers.native.metrics import Metrics
from trainers.native.optim import build_optimizer, lr_at, set_lr, set_optimizer_mode
from trainers.native.progress import EtaEstimator, PhaseProgress, preview_rounds_left
from trainers.native.sampling import render_samples
from trainers.native.settings import RunSettings, check_supported, read_toml
from trainers.runs import resolve_config_path

log = logging.getLogger(__name__)

FAMILIES = NATIVE_FAMILIES  # [model] type -> "module:Class" (trainers/config/registry.py ``native``)


SPACE_CHECK_S = 60.0  # how often the free space of the run folder is checked while training
# How often the commands folder is polled at step boundaries: each poll is three failed unlinks, and on a fast CPU
# step the system calls cost about 0.5 % of the step (bench/overhead.py); a GPU step is longer than this anyway.
COMMAND_POLL_S = 0.25
MAX_SKIPPED_STEPS = 20  # nonfinite_loss = "skip": this many non-finite steps in a row stop the run anyway


class NonFiniteLoss(RuntimeError):
    """Training diverged: the loss, the gradient norm or the LoRA weights became NaN, infinite or absurd."""


def _save_step(name: str) -> int:
    """The step of a ``step<N>`` / ``global_step<N>`` folder name; -1 for any other name."""
    for prefix in (STATE_PREFIX, "step"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return int(name[len(prefix):])
    return -1


def load_family(model: dict, device: torch.device, fuse_adapters: list[dict] | None = None) -> Family:
    """Instantiate the family named by ``[model] type``, with ``[adapter] fuse_adapters`` merged in."""
    kind = model.get("type")
    if kind not in FAMILIES:
        raise ValueError(f"[model] type = {kind!r} is not supported by the native trainer yet; "
                         f"supported: {', '.join(FAMILIES)} (use the diffusion-pipe backend for the others)")
    module, cls = FAMILIES[kind].split(":")
    return getattr(importlib.import_module(module), cls).load(model, device, fuse_adapters=fuse_adapters)


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
    """One native run, from loading to the final save. ``run()`` returns the finish reason.

    ``resume`` names a ``global_step<N>`` folder of this run: training continues from exactly that state.
    """

    def __init__(self, settings: RunSettings, events: EventWriter, resume: str | None = None):
        self.s, self.events, self.resume = settings, events, resume
        self.step, self.epoch, self.steps_into_epoch, self.examples = 0, 1, 0, 0
        self.phase = "starting"
        self.stop_requested = False
        self.last_saved_step = self.last_sampled_step = self.last_state_step = self.last_eval_step = -1
        self.last_state_time = time.time()
        self.timing = EtaEstimator()
        self.sampling_s, self.training_began = 0.0, time.monotonic()  # the preview cost, reported after each round
        self.epoch_losses: list[float] = []
        self.skipped_in_a_row = 0
        self.space_checked = -SPACE_CHECK_S
        self.commands_polled = -COMMAND_POLL_S
        self.tb_warned = False
        self.metrics: Metrics | None = None
        config = settings.config
        model = config.get("model", {})
        self.tcfg = TimestepConfig.from_model_table(model)
        # As the family resolves it: relative to the working directory, the source config's folder.
        base = base_model_value(model)
        self.base_model_path = resolve_config_path(Path.cwd(), base) if isinstance(base, str) else None
        self.loss_cfg = LossConfig.from_config(config)
        self.save_dtype = dtype_of(config["save_dtype"], "save_dtype", storage=True) if "save_dtype" in config else None
        self.nonfinite = str(config.get("studio", {}).get("nonfinite_loss", "stop"))
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"[studio] nonfinite_loss = {self.nonfinite!r}: use 'stop' (save and stop) or 'skip' "
                             "(drop the step and go on)")

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
        """Load the model, attach the LoRA, cache the datasets, build the optimizer and the loggers."""
        self.device = pick_device()
        self.generator = seed_everything(self.s.seed)
        self.rng = random.Random(self.s.seed)
        config = self.s.config
        for warning in check_supported(config, self.s.dataset):
            self._log(warning, "warning")
        self._set_phase("loading", f"loading {config['model'].get('type')} on {self.device}")
        started = time.time()
        self.family = load_family(config["model"], self.device, (config.get("adapter") or {}).get("fuse_adapters"))
        self._attach_adapter(config)
        self._log(f"model loaded in {time.time() - started:.1f} s")
        self.cache = self._cache_dataset(self.s.dataset, "training")
        self.eval_sets = []
        for name, path in eval_sets_from_config(config, Path.cwd()):
            dataset = read_toml(path, f"eval_datasets: {name}")
            check_supported(config, dataset)
            self.eval_sets.append(EvalSet(name, self._cache_dataset(dataset, f"eval set {name}")))
        self._plan()
        lr_groups = getattr(self.family, "lr_groups", None)  # per-component learning rates (SDXL)
        self.optimizer = build_optimizer(self.params, config.get("optimizer", {}),
                                         lr_groups(self.params) if lr_groups else None)
        set_optimizer_mode(self.optimizer, True)
        self.base_lr = float(config.get("force_constant_lr", config["optimizer"]["lr"]))
        resumed_at = None
        if self.resume:
            resumed_at = self._restore(self.resume)
        self.metrics = Metrics(self.s.run_dir, config, resumed_at)
        self.guard = DivergenceGuard([p for _, p in self.params])
        self.guard.take((self.step, self.epoch, self.steps_into_epoch, self.examples), self.optimizer,
                        state_mod.rng_states(self.rng, self.generator))  # the start is sane by definition

    def _attach_adapter(self, config: dict) -> None:
        table = config.get("adapter")
        if not table:
            raise ValueError("the native trainer trains LoRAs only: add an [adapter] table (type = 'lora')")
        self.rank, self.dropout = adapter_settings(table)
        dtype = dtype_of(table.get("dtype", config["model"]["dtype"]), "[adapter] dtype")
        if table.get("init_from_existing"):
            self.params = self.family.init_from_existing(table["init_from_existing"], self.rank, self.dropout, dtype,
                                                         table.get("exclude_modules"))
            self._log(f"LoRA starts from {table['init_from_existing']}")
        else:
            self.params = self.family.attach_new_lora(self.rank, self.dropout, dtype, table.get("exclude_modules"))
        if config.get("activation_checkpointing") is True:
            self.family.enable_activation_checkpointing(bool(config.get("reentrant_activation_checkpointing")))
        self.family.transformer.train()
        trainable = sum(p.numel() for _, p in self.params)
        total = sum(p.numel() for p in self.family.transformer.parameters())
        self._log(f"trainable params: {trainable:,} || all params: {total:,} || "
                  f"trainable%: {100 * trainable / total:.4f} (LoRA rank {self.rank}, alpha = rank)")

    def _cache_dataset(self, dataset: dict, what: str) -> cache_mod.Cache:
        config = self.s.config
        items = scan_dataset(dataset, self.s.seed, multiple=self.family.pixel_multiple, model=self.family.name,
                             edit=bool(getattr(self.family, "edit_datasets", False)),
                             strict=bool(config.get("studio", {}).get("strict_dataset", False)))
        if items[0].control is not None and what == "training":  # edit datasets: the previews' reference
            self.family.preview_control = items[0].control  # (data.first_control finds the same one)
        self._set_phase("caching", f"{len(items)} examples of the {what} set", total=len(items))
        started = time.time()
        cache = cache_mod.build_cache(
            self.family, items, self.s.seed, regenerate=bool(config.get("regenerate_cache", False)),
            progress=PhaseProgress(self.events, "caching", f"latents of the {what} set"),
            batch_size=int(config.get("caching_batch_size", 1)),
            workers=int(config.get("map_num_proc", min(8, os.cpu_count() or 1))))
        sizes = ", ".join(f"{b.size[0]}x{b.size[1]}: {len(b.text_rows)}" for b in cache.buckets)
        self._log(f"cached {len(items)} examples of the {what} set in {time.time() - started:.1f} s "
                  f"({cache.stats.summary()}; buckets {sizes})")
        return cache

    def _plan(self) -> None:
        s, config = self.s, self.s.config
        self.micro_batch = cache_mod.micro_batch_sizes(config)
        self.subsample = subsample_ratio(s.dataset)
        self.steps_per_epoch = cache_mod.steps_per_epoch(self.cache, self.micro_batch, s.grad_accum,
                                                         subsample_ratio=self.subsample)
        if self.steps_per_epoch == 0:
            raise RuntimeError(f"Processed dataset was empty: every bucket has fewer examples than the global "
                               f"batch size ({s.global_batch}); lower micro_batch_size_per_gpu or add images")
        self.schedule_steps = s.epochs * self.steps_per_epoch
        self.total_steps = min(self.schedule_steps, s.max_steps) if s.max_steps else self.schedule_steps
        self.save_steps = s.save_every_n_steps
        if s.save_every_n_examples:  # diffusion-pipe: examples // global batch size
            self.save_steps = max(1, s.save_every_n_examples // s.global_batch)
            print(f"Computed save_every_n_steps = {self.save_steps}", flush=True)
        self.eval_steps = config.get("eval_every_n_steps")
        if config.get("eval_every_n_examples"):
            self.eval_steps = max(1, int(config["eval_every_n_examples"]) // s.global_batch)
            print(f"Computed eval_every_n_steps = {self.eval_steps}", flush=True)
        self.eval_epochs = config.get("eval_every_n_epochs")
        self.eval_micro_batch = self.micro_batch
        for key in ("eval_image_micro_batch_size_per_gpu", "eval_micro_batch_size_per_gpu"):
            if key in config:
                self.eval_micro_batch = cache_mod.micro_batch_picker(config[key], key)
                break
        self.eval_grad_accum = int(config.get("eval_gradient_accumulation_steps", 1))
        self.checkpoint_minutes = config.get("checkpoint_every_n_minutes")
        self.checkpoint_epochs = config.get("checkpoint_every_n_epochs")
        self._log(f"Global batch size = {s.global_batch}; {self.steps_per_epoch} steps per epoch, "
                  f"{self.total_steps} steps in all")

    def _restore(self, name: str) -> int:
        """Load ``global_step<N>`` of this run: LoRA, optimizer, RNG states and data position."""
        if not name.startswith(STATE_PREFIX):
            raise ValueError(f"--resume {name!r}: the native trainer resumes from a {STATE_PREFIX}<N> folder; "
                             "a saved LoRA (epochN/stepN) starts a new run with [adapter] init_from_existing")
        loaded = state_mod.load_state(self.s.run_dir / name)
        state_mod.check_layout(name, loaded.meta, getattr(self.family, "lora_layout", "peft"), self.s.run_dir)
        params = dict(self.params)
        if set(loaded.lora) != set(params):
            missing = sorted(set(params) ^ set(loaded.lora))[:5]
            raise ValueError(f"{name} does not match this LoRA (rank, targets or exclude_modules changed?): "
                             f"differing weights include {', '.join(missing)}")
        with torch.no_grad():
            for key, value in loaded.lora.items():
                if params[key].shape != value.shape:
                    raise ValueError(f"{name}: {key} has shape {tuple(value.shape)}, the LoRA now has "
                                     f"{tuple(params[key].shape)} ([adapter] rank changed?)")
                params[key].copy_(value)
        self.optimizer.load_state_dict(loaded.optimizer)
        pos = loaded.position
        self.step, self.epoch, self.steps_into_epoch, self.examples = (pos.step, pos.epoch, pos.steps_into_epoch,
                                                                        pos.examples)
        self.last_saved_step = self.last_sampled_step = self.last_state_step = pos.step
        state_mod.restore_rng(loaded.rng, self.rng, self.generator)
        self._log(f"Resuming training from checkpoint. Resuming at epoch: {self.epoch}, step: {self.step}")
        return pos.step

    # ----- training -----------------------------------------------------------------------------------
    def run(self) -> str:
        """Train until ``epochs`` or ``max_steps`` or a stop; returns "completed" or "stopped"."""
        try:
            self.setup()
            self.training_began = time.monotonic()
            if not self.resume:
                if self.eval_sets and self.s.config.get("eval_before_first_step", True):
                    self.eval_now()
                if self.s.studio.at_start:
                    self.sample_now()
            self._set_phase("training", f"{self.total_steps} steps", total=self.total_steps)
            reason = self._train()
            self._set_phase("finished", reason)
            return reason
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _train(self) -> str:
        if self.s.max_steps and self.step >= self.s.max_steps:
            return "completed"  # resumed a run that had already reached max_steps
        if self.steps_into_epoch >= self.steps_per_epoch:  # resumed from the end of an epoch
            self.epoch, self.steps_into_epoch = self.epoch + 1, 0
        for epoch in range(self.epoch, self.s.epochs + 1):
            self.epoch = epoch
            batches = cache_mod.epoch_batches(
                self.cache, self.micro_batch, self.s.grad_accum, self.s.seed, epoch, subsample_ratio=self.subsample,
                start=self.steps_into_epoch,
                reshuffle=self.s.config.get("studio", {}).get("epoch_order", "fixed") == "reshuffle")
            for micro_batches in batches:
                if self._handle_commands():
                    return "stopped"
                self._set_phase("training", total=self.total_steps)
                self._optimizer_step(micro_batches)
                self._after_step()
                if self.s.max_steps and self.step >= self.s.max_steps:
                    self._finish(f"step{self.step}")
                    return "completed"
            self._end_epoch(epoch)
        self._finish(f"epoch{self.s.epochs}")
        return "completed"

    def _end_epoch(self, epoch: int) -> None:
        if self.epoch_losses:
            self.metrics.epoch(epoch, sum(self.epoch_losses) / len(self.epoch_losses))
        self.epoch_losses = []
        if self.s.save_every_n_epochs and epoch % self.s.save_every_n_epochs == 0:
            self.save_now(f"epoch{epoch}")
        if self.eval_epochs and epoch % int(self.eval_epochs) == 0 and self.eval_sets:
            self.eval_now()
        if epoch == self.s.epochs:
            return
        # The position moves to the start of the next epoch before any checkpoint is taken here.
        self.epoch, self.steps_into_epoch = epoch + 1, 0
        if self.checkpoint_epochs and epoch % int(self.checkpoint_epochs) == 0:
            self.checkpoint_now()
        print(f"Started new epoch: {epoch + 1}", flush=True)

    def _optimizer_step(self, micro_batches: list[cache_mod.Batch]) -> None:
        started = time.time()
        # what this step starts from, for the guard's copy when one is due
        rng = state_mod.rng_states(self.rng, self.generator) if self.guard.copy_due() else None
        position = (self.step, self.epoch, self.steps_into_epoch, self.examples)
        lr = lr_at(self.step, self.base_lr, self.s.warmup_steps, self.s.lr_scheduler, self.schedule_steps)
        if "force_constant_lr" in self.s.config:
            lr = self.base_lr
        set_lr(self.optimizer, lr)
        loss_sum = 0.0
        for batch in micro_batches:
            loss = self._micro_batch_loss(batch) / len(micro_batches)
            loss.backward()
            loss_sum += loss.item()
        params = [p for _, p in self.params]
        if self.s.grad_clip > 0:  # the norm before clipping, as diffusion-pipe reports it
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.s.grad_clip))
        else:
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
        self.step += 1
        self.steps_into_epoch += 1
        self.examples += self.s.global_batch
        why = self.guard.check_signals(loss_sum, norm)
        if why is None:
            self.guard.confirm(loss_sum, norm, position, self.optimizer, rng)
            self.optimizer.step()
            why = self.guard.check_weights() if self.guard.check_due() else None
        self.optimizer.zero_grad(set_to_none=True)
        if why is not None:
            self._diverged(why, lr)
            return
        self.skipped_in_a_row = 0
        self.epoch_losses.append(loss_sum)
        seconds = time.time() - started
        self.guard.tune(seconds)
        self._emit_step(loss_sum, lr, norm if self.s.grad_clip > 0 else None, seconds)

    def _diverged(self, why: str, lr: float) -> None:
        """A diverging step (trainers/native/divergence.py): back to the last sane weights; skip on, or save and
        stop with a fix that works."""
        snap = self.guard.restore(self.optimizer)
        self.skipped_in_a_row += 1
        if self.nonfinite == "skip" and self.skipped_in_a_row < MAX_SKIPPED_STEPS:
            self._log(f"{why} at step {self.step}: step skipped, weights back to those of step {snap.position[0]} "
                      f"([studio] nonfinite_loss = 'skip')", "warning")
            return
        failed_at = self.step
        if self.nonfinite == "skip":
            why = f"{MAX_SKIPPED_STEPS} diverging steps in a row (the last: {why})"
        self.step, self.epoch, self.steps_into_epoch, self.examples = snap.position
        self._log(f"{why} at step {failed_at}: saving the last sane LoRA and training state (step {self.step}), "
                  "then stopping", "error")
        later = sorted(p.name for p in self.s.run_dir.iterdir() if p.is_dir() and _save_step(p.name) > self.step)
        if later:
            self._log(f"{', '.join(later)} hold weights saved after step {self.step}, on the way to this divergence: "
                      f"use step{self.step} / {STATE_PREFIX}{self.step}", "warning")
        if self.step > 0 and self.last_saved_step != self.step:
            self.save_now(f"step{self.step}")
        if self.step > 0 and self.last_state_step != self.step:
            self.checkpoint_now(rng=snap.rng)
        raise NonFiniteLoss(f"{why} at step {failed_at}. {self._fix(why, lr)}")

    def _fix(self, why: str, lr: float) -> str:
        key = "force_constant_lr" if "force_constant_lr" in self.s.config else "[optimizer] lr"
        config = self.s.run_dir / self.s.main_path.name
        lower = f"set {key} = {min(lr / 10, 1e-3):.3g} (this step used {lr:.3g})"
        if self.step == 0:
            return f"Fix: {lower} in your config and start the run again (no step was sane enough to save)."
        fix = (f"Fix: {lower} in {config} (the copy of the config a resume reads), then resume from "
               f"{STATE_PREFIX}{self.step}; or start a new run from the LoRA step{self.step} with the lower lr.")
        if why.startswith("non-finite") and self.nonfinite == "stop":
            fix += (" If [model] dtype / transformer_dtype is float16, use bfloat16; if one bad batch caused it, "
                    "[studio] nonfinite_loss = 'skip' drops such steps.")
        return fix

    def _micro_batch_loss(self, batch: cache_mod.Batch) -> torch.Tensor:
        x0, text, mask = cache_mod.batch_tensors(self.cache, batch, self.s.uncond_fraction, self.rng)
        x0 = x0.to(self.device, self.family.dtype)
        weights = latent_mask(mask, x0.shape[-2:]) if mask is not None else None
        own = getattr(self.family, "training_inputs", None)  # a family's own objective (SDXL: DDPM eps / v)
        if own is not None:  # its loss is plain MSE weighted per sample (models/sdxl.py get_loss_fn)
            x_t, t, target, per_sample = own(x0, self.generator)
            return flow_loss(self.family.predict(x_t, t, text), target, LossConfig(), weights, per_sample)
        t = sample_timesteps(self.tcfg, x0.shape[0], self.family.image_seq_len(x0.shape), self.generator)
        noise = torch.randn(x0.shape, generator=self.generator).to(self.device)  # float32
        x_t, target = noisy_input(x0, noise, t.to(self.device))
        control = cache_mod.batch_controls(self.cache, batch)  # edit datasets: the control latents
        extra = {} if control is None else {"control": control.to(self.device, self.family.dtype)}
        return flow_loss(self.family.predict(x_t, t.to(self.device), text, **extra), target, self.loss_cfg, weights)

    def _emit_step(self, loss: float, lr: float, grad_norm: float | None, seconds: float) -> None:
        self.timing.step(seconds)
        it_per_s = 1.0 / max(self.timing.step_seconds() or seconds, 1e-9)
        rounds = preview_rounds_left(self.step, self.total_steps, self.s.studio.every_n_steps)
        self.events.emit(StepEvent(
            step=self.step, epoch=self.epoch, loss=loss, lr=lr, it_per_s=it_per_s,
            samples_per_s=it_per_s * self.s.global_batch, total_steps=self.total_steps,
            eta_s=self.timing.eta(self.total_steps - self.step, rounds), grad_norm=grad_norm))
        self.metrics.step(self.step, self.examples, loss, lr, grad_norm)
        if self.metrics.tb.problem and not self.tb_warned:
            self.tb_warned = True
            self._log(f"{self.metrics.tb.problem}; training goes on, the monitor's charts are unaffected", "warning")
        every = int(self.s.config.get("steps_per_print", 1) or 1)
        if self.step % every == 0:
            print(f"steps: {self.step} loss: {loss:.4f} iter time (s): {seconds:.3f} "
                  f"samples/sec: {self.s.global_batch / max(seconds, 1e-9):.3f} lr: {lr:.3g}", flush=True)

    def _after_step(self) -> None:
        if self.save_steps and self.step % self.save_steps == 0:
            self.save_now(f"step{self.step}")
        if self.eval_steps and self.step % int(self.eval_steps) == 0 and self.eval_sets:
            self.eval_now()
        every = self.s.studio.every_n_steps
        if every and self.step % every == 0:
            self.sample_now()
        if self.checkpoint_minutes and time.time() - self.last_state_time >= 60 * float(self.checkpoint_minutes):
            self.checkpoint_now()
        self._check_space()

    def _check_space(self) -> None:
        """Warn in the monitor (once a minute at most) while the disk has room for fewer than two saves."""
        now = time.time()
        if now - self.space_checked < SPACE_CHECK_S:
            return
        self.space_checked = now
        need = state_mod.state_bytes(dict(self.params), self.optimizer)
        warning = space_warning(self.s.run_dir, need + state_mod.tensor_bytes(dict(self.params)))
        if warning is not None:
            self._log(warning, "warning")

    def _handle_commands(self) -> bool:
        """Take waiting commands (polled every ``COMMAND_POLL_S`` at most); True when the run must stop now (after
        saving the LoRA and the state)."""
        now = time.monotonic()
        if now - self.commands_polled >= COMMAND_POLL_S:
            self.commands_polled = now
            commands = take_commands(self.s.run_dir)
        else:
            commands = set()
        if commands:
            self._log(f"command received: {', '.join(sorted(c.value for c in commands))}")
        if Command.SAVE in commands:
            self.save_now(f"step{self.step}")
            self.checkpoint_now()
        if Command.SAMPLE in commands:
            self.sample_now(force=True)
        if Command.STOP in commands or self.stop_requested:
            if self.step > 0 and self.last_saved_step != self.step:
                self.save_now(f"step{self.step}")
            if self.step > 0 and self.last_state_step != self.step:
                self.checkpoint_now()
            return True
        return False

    def _finish(self, name: str) -> None:
        if self.last_saved_step != self.step:
            self.save_now(name)
        if self.s.studio.every_n_steps and self.last_sampled_step != self.step:
            self.sample_now()
        if self.eval_sets and (self.eval_steps or self.eval_epochs) and self.last_eval_step != self.step:
            self.eval_now()
        if self.last_state_step != self.step:
            self.checkpoint_now()  # as diffusion-pipe: one at the end, so a finished run can be extended

    # ----- outputs ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _eval_weights(self):
        """Schedule-free optimizers sample, evaluate and save from their averaged weights; others: no change."""
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:
            set_optimizer_mode(optimizer, False)
        try:
            yield
        finally:
            if optimizer is not None:
                set_optimizer_mode(optimizer, True)

    def sample_now(self, force: bool = False) -> None:
        """Render the ``[studio]`` previews at the current step (if any prompts are set)."""
        if not self.s.studio.prompts or (self.last_sampled_step == self.step and not force):
            return
        self._set_phase("sampling", f"step {self.step}")
        started = time.monotonic()
        with self._eval_weights():
            paths = render_samples(self.family, self.s.studio, self.s.run_dir, self.step, self.epoch, self.events)
        self.last_sampled_step = self.step
        self.timing.preview_round(time.monotonic() - started)
        self._log(self._preview_cost(len(paths), time.monotonic() - started))

    def _preview_cost(self, images: int, seconds: float) -> str:
        """What previews cost, so steps, size and cadence can be traded ([studio] sample_every_n_steps, width, height, steps)."""
        self.sampling_s += seconds
        share = 100 * self.sampling_s / max(time.monotonic() - self.training_began, 1e-9)
        took = f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}"  # a CPU round can take well under a second
        return (f"previews at step {self.step}: {images} images in {took} s; previews have taken "
                f"{self.sampling_s:.1f} s, {share:.0f} % of the run's time so far")

    def eval_now(self) -> None:
        """Eval loss of every eval set at diffusion-pipe's fixed timestep quantiles."""
        self._set_phase("evaluating", f"step {self.step}")
        print("Running eval", flush=True)
        self.last_eval_step = self.step
        for eval_set in self.eval_sets:
            with self._eval_weights():
                loss, quantiles, seconds = evaluate(self.family, eval_set, self.tcfg, self.loss_cfg,
                                                    self.eval_micro_batch, self.eval_grad_accum)
            self.events.emit(EvalEvent(step=self.step, epoch=self.epoch, name=eval_set.name, loss=loss,
                                       quantiles=quantiles))
            if self.metrics is not None:
                self.metrics.eval(eval_set.name, self.step, self.examples, loss, quantiles, seconds)
            self._log(f"eval {eval_set.name}: loss {loss:.4f} ({seconds:.1f} s)")

    def save_now(self, name: str) -> None:
        """Save the LoRA into ``<run dir>/<name>/`` in diffusion-pipe's layout."""
        self._set_phase("saving", name)
        with self._eval_weights():
            tensors, extra = self.family.export_lora(lora_state_dict(self.family.transformer))
        with room_for(self.s.run_dir, name, state_mod.tensor_bytes(tensors) + 64 * 1024,
                      "the LoRAs saved before are intact"):
            config = None if extra is None else adapter_config(self.rank, self.dropout, extra)
            save_lora(self.s.run_dir / name, tensors, config, self.s.main_path, self.save_dtype,
                      self.family.lora_file)
        self.events.emit(CheckpointEvent(step=self.step, epoch=self.epoch, path=name, what="lora"))
        self.last_saved_step = self.step
        print(f"Saving model to directory {name}", flush=True)
        # The file users load elsewhere: every key must name a Linear of this model with fitting shapes.
        level, message = lora_log_line(name, self.s.run_dir / name / self.family.lora_file, self.base_model_path)
        self._log(message, level)

    def checkpoint_now(self, rng: dict | None = None) -> None:
        """Write the full training state (``global_step<N>/``) for an exact resume (``rng``: the random states
        to record, when they are not the current ones)."""
        self._set_phase("saving", f"{STATE_PREFIX}{self.step}")
        position = state_mod.Position(self.step, self.epoch, self.steps_into_epoch, self.examples)
        folder = state_mod.save_state(self.s.run_dir, position, dict(self.params), self.optimizer,
                                      rng or state_mod.rng_states(self.rng, self.generator),
                                      {"lora_layout": getattr(self.family, "lora_layout", "peft")})
        self.events.emit(CheckpointEvent(step=self.step, epoch=self.epoch, path=folder.name, what="state"))
        self.last_state_step, self.last_state_time = self.step, time.time()
        if self.metrics is not None:
            self.metrics.flush()
        print(f"Saved training state to {folder.name}", flush=True)

