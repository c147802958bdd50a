"""Pure logic of the Chroma wizard: check the user's files, fill a preset, estimate VRAM. No Gradio, no torch."""

from __future__ import annotations

from dataclasses import dataclass

from studio.wizard_models import WIZARD_MODELS, wizard_model
from trainers.config import toml_io
from trainers.paths import user_path
from trainers.profiles.store import ProfileStore, ProfileTexts
from trainers.vram import VramSettings, advice, estimate

PRESETS = ("Chroma E6AI 512", "Chroma E6AI 1024")  # shipped profiles (profiles/e6ai_*)


def preset_resolution(preset: str | None) -> int:
    """The training resolution a preset stands for."""
    return 1024 if "1024" in (preset or "") else 512


def check_models(diffusers_path: str, transformer_path: str, model: str | None = None) -> tuple[str, bool]:
    """A report on the model paths the picked model's config needs (Chroma when none is picked), and whether
    a run can load them."""
    lines, ok = wizard_model(model).check(diffusers_path, transformer_path)
    return "\n\n".join(lines), ok


def _names(names: list[str]) -> str:
    return f"{', '.join(names[:5])}{'…' if len(names) > 5 else ''}"


def check_dataset(folder: str, resolution: int) -> tuple[str, bool]:
    """Images and captions of the dataset folder as the trainer reads them (the dataset browser's reader and
    report): counts, files it skips and why, images smaller than the training size. Never raises."""
    from trainers.datasets import report as dataset_report  # imagehash, numpy: paid on the first check

    path = user_path(folder)
    if not folder.strip() or not path.is_dir():
        return f"✗ `{folder}` is not a folder: pick the folder with your images and their .txt captions.", False
    try:
        report = dataset_report.analyse(path, resolution=resolution, ar_buckets=True)
    except (dataset_report.DatasetReportError, OSError) as exc:
        return f"✗ {exc}", False
    if not report.images:
        return f"✗ `{folder}` holds no images.", False
    bad = [i for i in report.images if any(issue.startswith(("skipped:", "unreadable:", "video:"))
                                           for issue in i.issues)]
    readable = [i for i in report.images if i not in bad]
    uncaptioned = [i.path.name for i in readable if not i.captions and any(
        issue.startswith("no caption") for issue in i.issues)]
    small = [i.path.name for i in readable if i.width * i.height < resolution * resolution]
    trained = sum(1 for i in report.images if i.trained)
    lines = [f"✓ {len(readable)} images in `{folder}` ({trained} trained)."]
    if bad:
        lines.append(f"⚠ {len(bad)} skipped (unreadable or unsupported; Browse shows why): "
                     f"{_names([i.path.name for i in bad])}")
    if uncaptioned:
        lines.append(f"⚠ {len(uncaptioned)} without a .txt caption (skipped by default): {_names(uncaptioned)}")
    if small:
        lines.append(f"⚠ {len(small)} smaller than {resolution}² px (they are upscaled): {_names(small)}")
    return "\n\n".join(lines), trained > 0


@dataclass(frozen=True)
class WizardChoices:
    preset: str
    diffusers_path: str
    transformer_path: str
    dataset_dir: str
    output_dir: str
    run_name: str = ""
    activation_checkpointing: bool = False
    blocks_to_swap: int = 0
    model: str = "Chroma"  # the picked model's label (studio/wizard_models.py)


def build_pair(store: ProfileStore, c: WizardChoices) -> ProfileTexts:
    """The preset's TOML pair with the user's paths and memory settings written in (comments kept)."""
    base = store.texts(c.preset)
    main = toml_io.loads(base.main_text, base.main_name)
    toml_io.set_value(main, "output_dir", c.output_dir)
    model = wizard_model(c.model)
    toml_io.set_value(main, "model.type", model.type)
    for key in model.drop_model_keys:
        toml_io.delete_value(main, f"model.{key}")
    if model.folder_key:
        toml_io.set_value(main, f"model.{model.folder_key}", c.diffusers_path)
    if c.transformer_path or model.transformer_required:
        toml_io.set_value(main, f"model.{model.file_key}", c.transformer_path)
    else:  # optional for this model: the folder's own transformer is trained
        toml_io.delete_value(main, f"model.{model.file_key}")
    for key, value in model.studio_keys:
        toml_io.set_value(main, f"studio.{key}", value)
    if c.activation_checkpointing:
        toml_io.set_value(main, "activation_checkpointing", True)
    if c.blocks_to_swap:  # the native trainer has no block swap: such a run goes to the user's diffusion-pipe
        toml_io.set_value(main, "blocks_to_swap", int(c.blocks_to_swap))
        toml_io.set_value(main, "studio.backend", "diffusion-pipe")
    if c.run_name and toml_io.get_value(main, "monitoring.wandb_run_name") is not None:
        toml_io.set_value(main, "monitoring.wandb_run_name", c.run_name)
    dataset = toml_io.loads(base.dataset_text, base.dataset_name)
    toml_io.set_value(dataset, "directory[0].path", c.dataset_dir)
    return ProfileTexts(base.main_name, toml_io.dumps(main), base.dataset_name, toml_io.dumps(dataset))


def vram_settings(main_text: str, dataset_text: str) -> VramSettings:
    """What the estimate needs, read from the generated pair."""
    main, dataset = toml_io.loads_plain(main_text), toml_io.loads_plain(dataset_text)
    mbs = main.get("micro_batch_size_per_gpu", 1)
    return VramSettings(
        resolution=int(max(dataset.get("resolutions", [512]), key=lambda r: r if isinstance(r, int) else 0)),
        batch=int(mbs if isinstance(mbs, int) else 1),
        rank=int(main.get("adapter", {}).get("rank", 32)),
        transformer_dtype=main.get("model", {}).get("transformer_dtype", main.get("model", {}).get("dtype", "bfloat16")),
        adapter_dtype=main.get("adapter", {}).get("dtype", "bfloat16"),
        optimizer=main.get("optimizer", {}).get("type", "adamw"),
        activation_checkpointing=bool(main.get("activation_checkpointing", False)),
        blocks_to_swap=int(main.get("blocks_to_swap", 0)),
        model=str(main.get("model", {}).get("type", "chroma")))


def vram_markdown(settings: VramSettings, card_gb: int) -> str:
    """The estimate, its parts, a verdict for the user's card, and what to change if it does not fit."""
    est = estimate(settings)
    parts = " · ".join(f"{name} {gb:.1f} GB" for name, gb in est.parts.items())
    verdict = (f"✓ fits a {card_gb} GB card" if est.fits(card_gb)
               else f"✗ does not fit a {card_gb} GB card")
    smallest = est.smallest_card()
    lines = [f"**Estimated peak VRAM: {est.total_gb:.1f} GB** ({verdict}; smallest card that fits: "
             f"{f'{smallest} GB' if smallest else 'none listed'})", parts]
    tips = advice(settings, card_gb)
    if tips:
        lines.append("To fit " + f"{card_gb} GB: " + "; then ".join(tips) + ".")
    label = next((m.label for m in WIZARD_MODELS.values() if m.type == settings.model), settings.model)
    lines.append(f"_An estimate from {label}'s architecture and your settings (resolution, batch, rank, dtypes, "
                 "checkpointing, block swap); the monitor shows the real peak once training runs._")
    return "\n\n".join(lines)
