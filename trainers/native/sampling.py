"""Preview images during training: fixed prompts x fixed seeds from ``[studio]``, one PNG and event each."""

from __future__ import annotations

import io
from pathlib import Path

from trainers.events import EventWriter, PhaseEvent, SampleEvent
from trainers.native.families.base import Family, SampleRequest
from trainers.native.lora_io import write_atomic
from trainers.native.settings import StudioSettings

SAMPLES_DIR = "samples"


def sample_name(step: int, prompt_index: int, seed: int) -> str:
    """File name of a preview, as docs/run-folder.md specifies."""
    return f"step{step:06d}_p{prompt_index}_s{seed}.png"


def requests_for(studio: StudioSettings) -> list[tuple[int, SampleRequest]]:
    """(prompt index, request) for every prompt x seed."""
    return [(i, SampleRequest(prompt, seed, studio.width, studio.height, studio.steps, studio.guidance,
                              studio.negative_prompt))
            for i, prompt in enumerate(studio.prompts) for seed in studio.seeds]


PREVIEW_BATCH = 4  # previews rendered per pipeline call (the families batch the requests they are given)


def render_samples(family: Family, studio: StudioSettings, run_dir: Path, step: int, epoch: int,
                   events: EventWriter) -> list[Path]:
    """Render every preview with the live model, ``PREVIEW_BATCH`` per call; each PNG is written atomically and
    its event emitted as soon as its batch is done, and a progress event says how many of the round are done."""
    paths = []
    indexed = requests_for(studio)
    for start in range(0, len(indexed), PREVIEW_BATCH):
        chunk = indexed[start:start + PREVIEW_BATCH]
        events.emit(PhaseEvent(phase="sampling", message=f"step {step}: previews {start + 1}-{start + len(chunk)} "
                               f"of {len(indexed)}", total=len(indexed), done=start))
        images = family.sample([request for _, request in chunk])  # one batch: far fewer transformer calls
        for (index, request), image in zip(chunk, images, strict=True):
            rel = Path(SAMPLES_DIR) / sample_name(step, index, request.seed)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            write_atomic(run_dir / rel, buf.getvalue())
            events.emit(SampleEvent(step=step, epoch=epoch, path=rel.as_posix(), prompt=request.prompt,
                                    seed=request.seed, index=index))
            paths.append(run_dir / rel)
    return paths
