"""Regenerate tests/golden/configs/invalid/*.toml: base_main.toml / base_dataset.toml with one thing broken.

Run: .venv/bin/python tests/golden/configs/generate_invalid.py. Each file starts with a header the test reads:
``# expect: KEY`` (the one dotted key that must be rejected), ``# kind: main|dataset``, optionally
``# num_gpus: N`` and, for dataset files, ``# main-set: KEY = VALUE`` edits applied to the base main.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import tomlkit

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parents[2]))

from trainers.config.toml_io import delete_value, dumps, loads, set_value  # noqa: E402

F, D = "tree/chroma.safetensors", "tree/flux-schnell"
MODELS = {
    "flux": {"diffusers_path": D},
    "sd3": {"diffusers_path": D},
    "hunyuan-video": {"ckpt_path": D},
    "wan": {"ckpt_path": D},
    "sdxl": {"checkpoint_path": F},
    "cosmos": {"transformer_path": F, "vae_path": F, "text_encoder_path": F},
    "minimax_h3": {"diffusion_model": F, "vae": F, "audio_vae": F,
                   "text_encoders": [{"path": F, "type": "minimax"}]},
    "z_image": {"diffusion_model": F, "vae": F, "text_encoders": [{"path": F, "type": "lumina2"}]},
}

# (file stem, kind, expected key, edits, header extras). Edits: ("set", key, value) | ("del", key) |
# ("model", type) | ("append", raw toml text).
MAIN_CASES = [
    ("missing_save_every", "save_every_n_epochs", [("del", "save_every_n_epochs")], ""),
    ("adapter_alpha", "adapter.alpha", [("set", "adapter.alpha", 16)], ""),
    ("adapter_type_dora", "adapter.type", [("set", "adapter.type", "dora")], ""),
    ("lokr_on_flux", "adapter.type", [("model", "flux"), ("set", "adapter.type", "lokr")], ""),
    ("lora_fractional_rank", "adapter.rank", [("set", "adapter.rank", 16.5)], ""),
    ("block_swap_with_pipeline", "blocks_to_swap", [("set", "blocks_to_swap", 4), ("set", "pipeline_stages", 2)],
     "# num_gpus: 2\n"),
    ("block_swap_full_finetune", "blocks_to_swap",
     [("set", "blocks_to_swap", 4), ("del", "adapter"), ("del", "model.transformer_dtype")], ""),
    ("block_swap_unsupported_model", "blocks_to_swap", [("model", "sd3"), ("set", "blocks_to_swap", 4)], ""),
    ("block_swap_above_max", "blocks_to_swap", [("set", "blocks_to_swap", 40)], ""),
    ("gradient_release_data_parallel", "optimizer.gradient_release", [("set", "optimizer.gradient_release", True),
                                                                       ("set", "gradient_clipping", 0.0)],
     "# num_gpus: 2\n"),
    ("minimax_cfg_with_pipeline", "model.cfg", [("model", "minimax_h3"), ("set", "model.cfg", 4),
                                                ("set", "pipeline_stages", 2)], "# num_gpus: 2\n"),
    ("full_finetune_unsupported", "adapter", [("model", "hunyuan-video"), ("del", "adapter")], ""),
    ("wan_fp8_scaled_weights", "model.transformer_path",
     [("model", "wan"), ("set", "model.transformer_path", "tree/wan_fp8_scaled.safetensors")], ""),
    ("manual_partition_without_split", "partition_split",
     [("set", "partition_method", "manual"), ("set", "pipeline_stages", 2)], "# num_gpus: 2\n"),
    ("eval_dataset_bare_string", "eval_datasets[0]", [("set", "eval_datasets", ["base_dataset.toml"])], ""),
    ("activation_checkpointing_string", "activation_checkpointing", [("set", "activation_checkpointing", "yes")],
     ""),
    ("unknown_top_level_key", "save_every_n_epoch", [("set", "save_every_n_epoch", 2)], ""),
    ("unknown_model_key", "model.transformer_pth", [("set", "model.transformer_pth", F)], ""),
    ("unknown_model_type", "model.type", [("set", "model.type", "chrome")], ""),
    ("missing_model_type", "model.type", [("del", "model.type")], ""),
    ("missing_required_model_key", "model.transformer_path", [("del", "model.transformer_path")], ""),
    ("hunyuan_incomplete_file_set", "model.llm_path",
     [("model", "hunyuan-video"), ("del", "model.ckpt_path"), ("set", "model.transformer_path", F),
      ("set", "model.vae_path", F), ("set", "model.clip_path", D)], ""),
    ("bad_model_dtype", "model.dtype", [("set", "model.dtype", "bf16")], ""),
    ("epochs_as_string", "epochs", [("set", "epochs", "1000")], ""),
    ("batch_size_zero", "micro_batch_size_per_gpu", [("set", "micro_batch_size_per_gpu", 0)], ""),
    ("batch_size_bad_pairs", "micro_batch_size_per_gpu", [("set", "micro_batch_size_per_gpu", [[512]])], ""),
    ("uncond_fraction_above_one", "uncond_fraction", [("set", "uncond_fraction", 1.5)], ""),
    ("optimizer_foreign_keyword", "optimizer.momentum", [("set", "optimizer.momentum", 0.9)], ""),
    ("optimizer_without_type", "optimizer.type", [("del", "optimizer.type")], ""),
    ("optimizer_table_missing", "optimizer", [("del", "optimizer")], ""),
    ("optimizer_betas_length", "optimizer.betas", [("set", "optimizer.betas", [0.9])], ""),
    ("unknown_lr_scheduler", "lr_scheduler", [("set", "lr_scheduler", "cosine_with_restarts")], ""),
    ("unsupported_video_clip_mode", "video_clip_mode", [("set", "video_clip_mode", "multiple_overlapping")], ""),
    ("wandb_without_run_name", "monitoring.wandb_run_name",
     [("set", "monitoring.enable_wandb", True), ("set", "monitoring.wandb_tracker_name", "proj")], ""),
    ("placeholder_not_filled", "model.diffusers_path",
     [("set", "model.diffusers_path", "<fill in: FLUX.1-schnell diffusers folder>")], ""),
    ("model_file_missing", "model.transformer_path",
     [("set", "model.transformer_path", "tree/missing.safetensors")], ""),
    ("checkpoint_is_a_folder", "model.checkpoint_path", [("model", "sdxl"), ("set", "model.checkpoint_path",
                                                                            "tree/images")], ""),
    ("tilde_path", "output_dir", [("set", "output_dir", "~/runs")], ""),
    ("stale_pseudo_huber", "pseudo_huber_c", [("set", "pseudo_huber_c", 0.5)], ""),
    ("misspelled_eval_image_batch", "image_eval_micro_batch_size_per_gpu",
     [("set", "image_eval_micro_batch_size_per_gpu", 4)], ""),
    ("wan_min_t_above_max_t", "model.min_t", [("model", "wan"), ("set", "model.min_t", 0.9),
                                              ("set", "model.max_t", 0.5)], ""),
    ("unknown_timestep_method", "model.timestep_sample_method",
     [("set", "model.timestep_sample_method", "sigmoid")], ""),
    # models/base.py:582: a text encoder without path or paths raises ValueError
    ("text_encoder_without_path", "model.text_encoders[0]",
     [("model", "z_image"), ("set", "model.text_encoders", [{"type": "lumina2"}])], ""),
    ("pipeline_stages_vs_gpus", "pipeline_stages", [("set", "pipeline_stages", 2)], "# num_gpus: 1\n"),
    ("studio_unknown_backend", "studio.backend", [("set", "studio.backend", "deepspeed")], ""),
    ("studio_unknown_key", "studio.sample_every", [("set", "studio.sample_every", 100)], ""),
    ("studio_sample_width_not_16", "studio.sample_width", [("set", "studio.sample_width", 500)], ""),
    ("unknown_partition_method", "partition_method", [("set", "partition_method", "balanced")], ""),
    ("bad_save_dtype", "save_dtype", [("set", "save_dtype", "bf16")], ""),
    ("lora_dropout_above_one", "adapter.dropout", [("set", "adapter.dropout", 2.0)], ""),
    ("max_steps_zero", "max_steps", [("set", "max_steps", 0)], ""),
    ("missing_dataset_key", "dataset", [("del", "dataset")], ""),
    ("missing_epochs", "epochs", [("del", "epochs")], ""),
    ("eval_dataset_without_config", "eval_datasets[0].config", [("set", "eval_datasets", [{"name": "x"}])], ""),
    ("gradient_clipping_negative", "gradient_clipping", [("set", "gradient_clipping", -1.0)], ""),
]

DATASET_CASES = [
    ("too_many_resolutions", "resolutions", [("set", "resolutions", [256, 512, 768, 1024])], ""),
    ("directory_too_many_resolutions", "directory[0].resolutions",
     [("set", "directory[0].resolutions", [256, 512, 768, 1024])], ""),
    ("ar_bucket_without_count", "num_ar_buckets", [("del", "num_ar_buckets")], ""),
    ("directory_ar_bucket_without_count", "directory[0].num_ar_buckets",
     [("del", "num_ar_buckets"), ("set", "enable_ar_bucket", False),
      ("set", "directory[0].enable_ar_bucket", True)], ""),
    ("no_resolutions", "resolutions", [("del", "resolutions")], ""),
    ("cosmos_without_size_buckets", "size_buckets", [], "# main-model: cosmos\n"),
    ("directory_without_path", "directory[0].path", [("del", "directory[0].path")], ""),
    ("no_directory", "directory", [("del", "directory")], ""),
    ("multi_control_paths", "directory[0].control_paths", [("set", "directory[0].control_paths", [D])], ""),
    ("subsample_ratio_in_directory", "directory[0].subsample_ratio",
     [("set", "directory[0].subsample_ratio", 0.5)], ""),
    ("num_repeats_zero", "directory[0].num_repeats", [("set", "directory[0].num_repeats", 0)], ""),
    ("dataset_folder_missing", "directory[0].path", [("set", "directory[0].path", "tree/nope")], ""),
    ("mixed_ar_buckets", "ar_buckets", [("set", "ar_buckets", [1.0, [512, 512]])], ""),
    ("frame_bucket_zero", "frame_buckets[0]", [("set", "frame_buckets", [0, 33])], ""),
    ("directory_key_typo", "directory[0].num_repeat", [("set", "directory[0].num_repeat", 2)], ""),
    ("wan_i2v_images_only", "frame_buckets", [("set", "frame_buckets", [1])],
     "# main-model: wan\n# main-set: model.ckpt_path = 'tree/Wan2.1-I2V-14B'\n"),
    ("mask_path_is_a_file", "directory[0].mask_path", [("set", "directory[0].mask_path", F)], ""),
    ("caption_prefix_not_a_string", "caption_prefix", [("set", "caption_prefix", 3)], ""),
    ("unknown_dataset_key", "resolution", [("set", "resolution", [512])], ""),
]


def apply(doc, edits) -> None:
    for edit in edits:
        if edit[0] == "set":
            set_value(doc, edit[1], edit[2])
        elif edit[0] == "del":
            assert delete_value(doc, edit[1]), edit
        elif edit[0] == "model":
            table = tomlkit.table()
            table["type"] = edit[1]
            for key, value in MODELS[edit[1]].items():
                table[key] = value
            table["dtype"] = "bfloat16"
            doc["model"] = table


def write(stem: str, kind: str, expect: str, edits, extra: str, out: Path) -> None:
    base = (ROOT / ("base_main.toml" if kind == "main" else "base_dataset.toml")).read_text()
    body = "\n".join(line for line in base.split("\n") if not line.startswith("#"))
    doc = loads(body.lstrip("\n"))
    apply(doc, edits)
    header = f"# expect: {expect}\n# kind: {kind}\n{extra}"
    (out / f"{stem}.toml").write_text(header + "\n" + dumps(doc))


def main() -> None:
    out = ROOT / "invalid"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for stem, expect, edits, extra in MAIN_CASES:
        write(f"main_{stem}", "main", expect, edits, extra, out)
    for stem, expect, edits, extra in DATASET_CASES:
        write(f"dataset_{stem}", "dataset", expect, edits, extra, out)
    print(f"wrote {len(MAIN_CASES) + len(DATASET_CASES)} files to {out}")


if __name__ == "__main__":
    main()
