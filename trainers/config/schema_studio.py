"""The ``[studio]`` table: dp-studio-only settings (docs/run-folder.md). diffusion-pipe ignores the table."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from trainers.config.types import STRICT, NonNegFloat, NonNegInt, PosInt

SampleSide = Annotated[int, Field(ge=64, multiple_of=16)]


class StudioConfig(BaseModel):
    """Read by the native trainer and the studio; never by diffusion-pipe."""

    model_config = STRICT
    backend: Literal["native", "diffusion-pipe"] = Field("native", description="Which trainer runs this profile.")
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
