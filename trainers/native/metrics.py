"""Scalar logging with diffusion-pipe's tags: TensorBoard event files in the run folder, and W&B when enabled.

Tags: ``train/loss`` (every ``logging_steps``; x = step, or examples seen with ``x_axis_examples``),
``train/epoch_loss`` (x = epoch), ``train/lr`` and ``train/grad_norm`` (ours: diffusion-pipe does not log the
learning rate), ``<eval name>/loss_quantile_0.10`` ... ``0.90`` and ``<eval name>/loss``, ``eval/eval_time_sec``.
The W&B key comes from ``WANDB_API_KEY`` or the studio's secret store, never from the config; a key written in
``[monitoring] wandb_api_key`` is refused by the validator and never used here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from trainers.config.secrets import SecretStore

log = logging.getLogger(__name__)


class Metrics:
    """Writes scalars to TensorBoard (always) and W&B (``[monitoring] enable_wandb``)."""

    def __init__(self, run_dir: Path, config: dict, resumed_at: int | None = None):
        from trainers.native.tb_file import EventFile

        self.logging_steps = max(1, int(config.get("logging_steps", 1)))
        self.x_examples = bool(config.get("x_axis_examples", False))
        # A resumed run starts with a purge at its checkpoint's next step: TensorBoard drops the older points from
        # there, which this run writes again.
        self.tb = EventFile(run_dir, purge_step=resumed_at + 1 if resumed_at else None)
        self.wandb = None
        monitoring = config.get("monitoring") or {}
        if monitoring.get("enable_wandb"):
            self.wandb = self._start_wandb(run_dir, monitoring, resumed_at)

    @staticmethod
    def _start_wandb(run_dir: Path, monitoring: dict, resumed_at: int | None):
        import wandb

        key = SecretStore().get("wandb_api_key")  # WANDB_API_KEY first, then the 0600 store
        offline = os.environ.get("WANDB_MODE") in ("offline", "disabled")
        if not key and not offline:
            raise RuntimeError("[monitoring] enable_wandb = true but no W&B API key is stored. Fix: save it in the "
                               "studio's settings (secret store) or set WANDB_API_KEY, or set WANDB_MODE=offline")
        if key:
            wandb.login(key=key, relogin=True, verify=False)
        return wandb.init(project=monitoring.get("wandb_tracker_name") or "dp-studio",
                          name=monitoring.get("wandb_run_name") or run_dir.name, dir=str(run_dir),
                          id=run_dir.name.replace("-", ""), resume="allow" if resumed_at else None,
                          config={"run_dir": str(run_dir)})

    def _x(self, step: int, examples: int) -> int:
        return examples if self.x_examples else step

    def _scalars(self, values: dict[str, float], x: int) -> None:
        """Scalars of one step as one TensorBoard event (trainers/native/tb_file.py)."""
        self.tb.scalars(values, x)
        if self.wandb is not None:
            self.wandb.log(values, step=x)

    def step(self, step: int, examples: int, loss: float, lr: float, grad_norm: float | None) -> None:
        """Per optimizer step (loss every ``logging_steps``)."""
        if step % self.logging_steps:
            return
        values = {"train/loss": loss, "train/lr": lr}
        if grad_norm is not None:
            values["train/grad_norm"] = grad_norm
        self._scalars(values, self._x(step, examples))

    def epoch(self, epoch: int, mean_loss: float) -> None:
        """At the end of an epoch: the mean loss over it."""
        self.tb.scalars({"train/epoch_loss": mean_loss}, epoch)
        if self.wandb is not None:
            self.wandb.log({"train/epoch_loss": mean_loss, "epoch": epoch})

    def eval(self, name: str, step: int, examples: int, loss: float, quantiles: dict[str, float],
             seconds: float) -> None:
        """One eval set's results."""
        values = {f"{name}/loss_quantile_{q}": value for q, value in quantiles.items()}
        values |= {f"{name}/loss": loss, "eval/eval_time_sec": seconds}
        self._scalars(values, self._x(step, examples))

    def flush(self) -> None:
        """Make what was logged readable now."""
        self.tb.flush()

    def close(self) -> None:
        """Flush and close every sink."""
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
