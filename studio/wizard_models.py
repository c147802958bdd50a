"""The models the guided wizard can set up: what step 1 asks for, how a model's files are checked, and what
the preset changes for it. Pure data and checks (no Gradio, no torch); the wizard reads it, never a family name.

A model is offered here once the native trainer trains it (trainers/config/registry.py ``native``), so the
wizard's runs get in-loop previews and exact resume whatever model is picked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainers.checkpoint_probe import ProbeError, check_flux_folder, probe_transformer_path, read_header
from trainers.paths import user_path

CHROMA_SAMPLING = ("Chroma previews use the T5 attention mask and real classifier-free guidance with a negative "
                   "prompt (Chroma has no distilled guidance): 26 steps at guidance 4 are the preset's defaults.")
FLUX_SAMPLING = ("Flux previews use FLUX.1-dev's embedded guidance (3.5) and no negative prompt (no real "
                 "classifier-free guidance), 20 steps. Training uses `[model] guidance` (1.0 when absent, as "
                 "diffusion-pipe does).")
SDXL_SAMPLING = ("SDXL previews use real classifier-free guidance (5.0, diffusers' default for SDXL) with the "
                 "negative prompt, 30 steps of the checkpoint's Euler scheduler. SDXL trains with its own objective "
                 "(noise prediction; `v_pred = true` for v-prediction checkpoints), not flow matching.")
# A FLUX.1 diffusers folder holds every part a Flux run loads (diffusion-pipe models/flux.py from_pretrained).
FLUX_RUN_PARTS = {"text_encoder": "the CLIP text encoder", "tokenizer": "the CLIP tokenizer"}
# One original-layout SDXL file holds the UNet, the VAE and both CLIP text encoders (diffusion-pipe models/sdxl.py
# reads [model] checkpoint_path with from_single_file): these key prefixes say so, from the header alone.
SDXL_PARTS = {"model.diffusion_model.input_blocks.": "the UNet", "first_stage_model.": "the VAE",
              "conditioner.embedders.0.": "the first CLIP text encoder",
              "conditioner.embedders.1.": "the second (OpenCLIP) text encoder"}


@dataclass(frozen=True)
class WizardModel:
    """One model the wizard sets up: labels of step 1's two paths, the preset's changes, the sampling note."""

    type: str  # the [model] type it writes
    label: str
    diffusers_label: str
    transformer_label: str
    transformer_required: bool
    sampling_note: str
    studio_keys: tuple[tuple[str, object], ...] = ()  # [studio] values replacing the (Chroma) preset's
    file_example: str = ""  # appended to "Pick a <label> file"
    folder_key: str | None = "diffusers_path"  # the [model] key of step 1's folder; None: the model has none
    file_key: str = "transformer_path"  # the [model] key of step 1's file
    drop_model_keys: tuple[str, ...] = ()  # the (Chroma) preset's [model] keys this model does not read

    def check(self, diffusers_path: str, transformer_path: str) -> tuple[list[str], bool]:
        """Report lines on the two paths, and whether a run can load them."""
        lines, ok = ([], True) if self.folder_key is None else self._check_folder(diffusers_path.strip(),
                                                                                  bool(transformer_path.strip()))
        if not transformer_path.strip():
            if self.transformer_required:
                return [*lines, f"✗ **{self.file_key}** is empty: pick the {self.label} .safetensors file."], False
            return [*lines, "ℹ No transformer file: the folder's own transformer/ is trained."], ok
        more, file_ok = self._check_file(transformer_path.strip())
        return [*lines, *more], ok and file_ok

    def _check_folder(self, folder: str, has_file: bool) -> tuple[list[str], bool]:
        if not folder:
            return [f"✗ **diffusers_path** is empty: pick the FLUX.1 diffusers folder "
                    f"({'VAE and T5' if self.type == 'chroma' else 'every part'} come from it)."], False
        path = user_path(folder)
        problems = check_flux_folder(path)
        if self.type != "chroma" and path.is_dir():
            parts = {**FLUX_RUN_PARTS, **({} if has_file else {"transformer": "the transformer"})}
            problems += [f"{path} has no {part}/ folder ({what}); pick a complete FLUX.1-dev diffusers download"
                         for part, what in parts.items() if not (path / part).is_dir()]
        if problems:
            return [f"✗ {p}" for p in problems], False
        found = "vae/, text_encoder_2/, tokenizer_2/" if self.type == "chroma" else "every part of a Flux run"
        return [f"✓ Flux folder `{folder}` has {found}."], True

    def _check_file(self, file: str) -> tuple[list[str], bool]:
        if self.type == "sdxl":
            return _check_sdxl_file(file)
        try:
            probe = probe_transformer_path(user_path(file))
        except ProbeError as exc:
            return [f"✗ {exc}"], False
        if probe.family != self.type:
            return [f"✗ `{Path(file).name}` is {_kind(probe.family)}, not {self.label} ({probe.summary()}). "
                    f"Pick a {self.label} file{self.file_example}."], False
        lines = [f"✓ {probe.summary()}."]
        if probe.dtype.startswith("float8"):
            lines.append("ℹ The file is stored in float8: keep `transformer_dtype = 'float8'`.")
        return lines, True


def _check_sdxl_file(file: str) -> tuple[list[str], bool]:
    """An original-layout SDXL checkpoint: one .safetensors file with every part of SDXL, from its header."""
    path = user_path(file)
    if path.is_dir() or path.suffix.lower() != ".safetensors":
        return [f"✗ `{file}` is not a .safetensors file: pick one SDXL checkpoint file "
                "(e.g. sd_xl_base_1.0.safetensors; diffusion-pipe's SDXL reads no diffusers folder)."], False
    try:
        header = read_header(path)
    except ProbeError as exc:
        return [f"✗ {exc}"], False
    keys = [k for k in header if k != "__metadata__"]
    missing = [what for prefix, what in SDXL_PARTS.items() if not any(k.startswith(prefix) for k in keys)]
    if missing:
        return [f"✗ `{path.name}` is not a whole SDXL checkpoint: it lacks {', '.join(missing)}. Pick the "
                "single-file SDXL model (UNet, VAE and both text encoders in one file, as sd_xl_base_1.0."
                "safetensors and its fine-tunes ship)."], False
    v_pred = any(k in ("v_pred", "edm_vpred.sigma_max") for k in keys)
    lines = [f"✓ SDXL checkpoint `{path.name}`: UNet, VAE and both text encoders ({len(keys):,} tensors)."]
    if v_pred:
        lines.append("ℹ The file marks itself v-prediction: set `[model] v_pred = true` in the config builder.")
    return lines, True


def _kind(family: str) -> str:
    """'a flux checkpoint', 'an unknown checkpoint' (the article follows the family's first sound)."""
    return f"{'an' if family[:1].lower() in 'aeiou' else 'a'} {family} checkpoint"


CHROMA = WizardModel("chroma", "Chroma", "FLUX.1 diffusers folder (diffusers_path: VAE + T5)",
                     "Chroma checkpoint (transformer_path: .safetensors file or diffusers folder)", True,
                     CHROMA_SAMPLING, file_example=" (e.g. chroma-unlocked-v47.safetensors)")
FLUX = WizardModel("flux", "Flux", "FLUX.1-dev diffusers folder (diffusers_path: transformer, VAE, CLIP and T5)",
                   "Flux transformer file (transformer_path, optional: a fine-tuned FLUX.1-dev .safetensors "
                   "trained in place of the folder's transformer)", False, FLUX_SAMPLING,
                   studio_keys=(("sample_guidance", 3.5), ("sample_steps", 20), ("sample_negative_prompt", "")),
                   file_example=" (a FLUX.1-dev fine-tune), or leave it empty to train the folder's transformer")
SDXL = WizardModel("sdxl", "SDXL", "", "SDXL checkpoint (checkpoint_path: one .safetensors file with the UNet, VAE "
                   "and both text encoders)", True, SDXL_SAMPLING,
                   studio_keys=(("sample_guidance", 5.0), ("sample_steps", 30)),
                   file_example=" (e.g. sd_xl_base_1.0.safetensors)", folder_key=None, file_key="checkpoint_path",
                   drop_model_keys=("diffusers_path", "transformer_path", "transformer_dtype", "flux_shift"))
WIZARD_MODELS: dict[str, WizardModel] = {m.label: m for m in (CHROMA, FLUX, SDXL)}


def wizard_model(label: str | None) -> WizardModel:
    """The model picked by its label (Chroma when none is)."""
    return WIZARD_MODELS.get(label or "", CHROMA)
