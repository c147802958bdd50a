"""The ``[studio]`` table: dp-studio-only settings (docs/run-folder.md). diffusion-pipe ignores the table."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from trainers.config.types import STRICT, NonNegFloat, NonNegInt, PosInt

SampleSide = Annotated[int, Field(ge=64, multiple_of=16)]


class StudioConfig(BaseModel):
    """Read by the native trainer and the studio; never by diffusion-pipe."""

    model_config = STRICT
    backend: Literal["auto", "native", "diffusion-pipe"] = Field(
        "auto", description="Which trainer runs this profile; auto: native for Chroma, diffusion-pipe otherwise.")
    sample_prompts: list[str] = Field([], description="Prompts rendered as previews during training.")
    sample_negative_prompt: str = Field("", description="Negative prompt for previews (real CFG).")
    sample_seeds: list[NonNegInt] = Field([], description="One preview per prompt and seed.")
    sample_every_n_steps: NonNegInt = Field(0, description="Render previews every N steps (0 = never).")
    sample_at_start: bool = Field(False, description="Render previews before the first step.")
    sample_width: SampleSide | None = Field(None, description="Preview width in pixels (multiple of 16).")
    sample_height: SampleSide | None = Field(None, description="Preview height in pixels (multiple of 16).")
    sample_steps: PosInt | None = Field(None, description="Sampling steps per preview.")
    sample_guidance: NonNegFloat | None = Field(None, description="Real CFG scale for previews.")
    notes: str = Field("", description="Free-form notes about this profile.")
    seed: NonNegInt = Field(42, description="Seed of the native trainer (data order, noise, timesteps, LoRA init).")
    nonfinite_loss: Literal["stop", "skip"] = Field(
        "stop", description="On a NaN/inf loss: 'stop' saves the last good LoRA and state and stops; 'skip' drops "
        "the step (20 in a row still stop).")
    strict_dataset: bool = Field(
        False, description="Stop on a bad dataset file (corrupt or truncated image, animated WebP, caption that is "
        "not UTF-8, symlink loop) instead of skipping it with a warning.")
    epoch_order: Literal["fixed", "reshuffle"] = Field(
        "fixed", description="'fixed' (diffusion-pipe's): one example order for every epoch, so the same leftover "
        "examples and the same subsample_ratio steps are dropped each epoch; 'reshuffle': a new order per epoch.")
    # The diffusion-pipe backend (trainers/diffusion_pipe): where the user's checkout is and how to launch it.
    diffusion_pipe_path: str | None = Field(None, description="Folder of your diffusion-pipe checkout "
                                            "(else env DP_STUDIO_DIFFUSION_PIPE).")
    deepspeed_command: str | None = Field(None, description="Launcher to use instead of `deepspeed` "
                                          "(e.g. a path inside the checkout's venv).")
    dp_num_gpus: PosInt = Field(1, description="GPUs given to deepspeed (--num_gpus).")
    dp_master_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None, description="--master_port for deepspeed and train.py (two concurrent runs need different ones).")
    dp_disable_nccl_p2p_ib: bool = Field(True, description="Set NCCL_P2P_DISABLE=1 and NCCL_IB_DISABLE=1 "
                                         "(needed on RTX 4000-series cards).")
    dp_expandable_segments: bool = Field(False, description="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
                                         "(less fragmentation on low-VRAM cards).")
    dp_extra_args: list[str] = Field([], description="Extra train.py arguments, e.g. ['--trust_cache'].")
    i_know_what_i_am_doing: bool = Field(False, description="Pass --i_know_what_i_am_doing (allows more than 3 "
                                         "resolutions and other setups diffusion-pipe refuses).")
    dp_stop_grace_s: Annotated[float, Field(gt=0)] = Field(
        300, description="Seconds Stop waits for diffusion-pipe's save_quit checkpoint before ending it.")
