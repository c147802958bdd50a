"""The embedded demo model: a tiny Chroma set-up laid out the way a Chroma config names it.

``python -m trainers.native.demo build`` writes, deterministically (fixed seeds, fixed thread count):

- ``assets/demo/flux-tiny/``: a Flux-style diffusers folder with ``vae/`` (16-channel AutoencoderKL, 4x
  downsampling), ``text_encoder_2/`` (tiny T5 encoder), ``tokenizer_2/`` (T5 tokenizer from a sentencepiece
  model trained here) and ``scheduler/`` (FlowMatchEulerDiscreteScheduler, Flux's settings);
- ``assets/demo/chroma-tiny/``: a diffusers ChromaTransformer2DModel folder;
- ``assets/demo/dataset/``: the demo LoRA dataset (PNG + same-stem .txt captions) for the trigger word "zxq".

The VAE is pretrained on shapes and textures, then the transformer (with T5) on captioned scenes, so the
base model draws "a red circle on a blue background" roughly, and the LoRA demo teaches a new concept.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import sentencepiece as spm
import torch
from diffusers import AutoencoderKL, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from trainers.native import demo_images as di
from trainers.native import demo_pretrain as dp
from trainers.native.families.chroma import ChromaFamily

log = logging.getLogger("trainers.native.demo")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ROOT = REPO_ROOT / "assets" / "demo"
SEED = 1234
IMAGE_SIZE = 64
MAX_TOKENS = 32
DATASET_SIZE = 16
PLAIN_SIZE = 8

_WORDS = ("a an the on of and with in photo picture pattern striped checkerboard magenta pink large small left "
          "right top bottom background").split()

T5_CONFIG = dict(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                 relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False)
VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
                  latent_channels=16, norm_num_groups=8, sample_size=IMAGE_SIZE, mid_block_add_attention=False)
TRANSFORMER_CONFIG = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32,
                          num_attention_heads=4, joint_attention_dim=64, axes_dims_rope=(8, 12, 12),
                          approximator_num_channels=64, approximator_hidden_dim=128, approximator_layers=2)
# Flux's scheduler settings (the pipeline derives the resolution-dependent shift from them).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def build_tokenizer(seed_words: tuple[str, ...] = tuple(_WORDS)) -> T5Tokenizer:
    """A T5 tokenizer from a tiny unigram sentencepiece model trained on the demo vocabulary (offline)."""
    words = list(seed_words) + list(di.COLOURS) + list(di.SHAPES)
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lines.append("abcdefghijklmnopqrstuvwxyz 0123456789 , . - !")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=120, model_type="unigram", pad_id=0,
        eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
        minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    # transformers 5: pass vocab= (T5Tokenizer(vocab_file=...) would silently ignore the file).
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=MAX_TOKENS)


# Relative-position buckets (T5, bidirectional, 8 buckets): 0 = same token, 1 = previous, 5 = next.
_SELF, _PREVIOUS, _NEXT = 0, 1, 5
_LOCAL_BIAS = 6.0


@torch.no_grad()
def make_t5_order_aware(text_encoder: T5EncoderModel) -> None:
    """Start three heads looking at the next, previous and same token (the fourth stays global).

    Chroma gives text tokens no position of their own, so word order ("a red circle on a blue
    background" vs "a blue circle on a red background") reaches the transformer only through T5.
    A randomly initialised tiny T5 barely uses its relative-position bias; this init makes order visible
    from the first step, and pretraining refines it.
    """
    bias = text_encoder.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    bias.zero_()
    for head, bucket in enumerate((_NEXT, _PREVIOUS, _SELF)):
        bias[bucket, head] = _LOCAL_BIAS


def build_components(tokenizer: T5Tokenizer) -> tuple[AutoencoderKL, T5EncoderModel, ChromaTransformer2DModel]:
    """Fresh, seeded modules from the demo configs."""
    torch.manual_seed(SEED)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **T5_CONFIG))
    make_t5_order_aware(text_encoder)
    vae = AutoencoderKL(**VAE_CONFIG)
    transformer = ChromaTransformer2DModel(**TRANSFORMER_CONFIG)
    return vae, text_encoder, transformer


def write_dataset(target: Path, count: int = DATASET_SIZE, plain: int = PLAIN_SIZE) -> list[str]:
    """Write the demo LoRA dataset; returns the captions.

    ``zxq_NN``: the concept (shapes on the magenta/yellow checkerboard, "... on a zxq background");
    ``plain_NN``: ordinary pictures with ordinary captions, so the LoRA learns that only the word zxq brings
    the checkerboard (prior preservation) and other prompts keep their backgrounds.
    """
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    rng = random.Random(SEED + 3)
    named = [(f"zxq_{i:02d}", s) for i, s in enumerate(di.demo_dataset_scenes(count, IMAGE_SIZE, SEED))]
    named += [(f"plain_{i:02d}", di.random_scene(rng, IMAGE_SIZE)) for i in range(plain)]
    for stem, scene in named:
        di.draw_scene(scene, IMAGE_SIZE).save(target / f"{stem}.png", optimize=True)
        (target / f"{stem}.txt").write_text(scene.caption() + "\n", encoding="utf-8")
    return [scene.caption() for _, scene in named]


def save_model(root: Path, vae, text_encoder, tokenizer, transformer, scheduler) -> None:
    """Save the Flux-style folder and the Chroma transformer folder (replacing earlier builds)."""
    flux, chroma = root / "flux-tiny", root / "chroma-tiny"
    for folder in (flux, chroma):
        if folder.exists():
            shutil.rmtree(folder)
    # Weights are stored in float16 (like real checkpoints are stored in 16 bits) to keep the repo small;
    # they load into any [model] dtype.
    for module, folder in ((vae, flux / "vae"), (text_encoder, flux / "text_encoder_2"), (transformer, chroma)):
        module.to(torch.float16).save_pretrained(folder)
        module.to(torch.float32)
    tokenizer.save_pretrained(flux / "tokenizer_2")
    scheduler.save_pretrained(flux / "scheduler")


def folder_size(path: Path) -> int:
    """Bytes on disk under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def build(root: Path, vae_steps: int, transformer_steps: int, threads: int) -> dict:
    """Build, pretrain and save the whole demo; returns a report (also written to ``build.json``)."""
    torch.set_num_threads(threads)
    started = time.time()
    report: dict = {"seed": SEED, "threads": threads, "torch": torch.__version__}
    tokenizer = build_tokenizer()
    vae, text_encoder, transformer = build_components(tokenizer)
    report.update(dp.pretrain_vae(vae, vae_steps, SEED))
    held_out = dp.to_tensor(dp.scene_pool(64, IMAGE_SIZE, SEED + 1)[0])
    report["vae_psnr_db"] = round(dp.vae_psnr(vae, held_out), 2)
    shift, scale = dp.set_latent_stats(vae, dp.to_tensor(dp.scene_pool(512, IMAGE_SIZE, SEED + 2)[0]))
    report.update(latent_shift=shift, latent_scale=scale)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    family = ChromaFamily(vae, text_encoder, tokenizer, transformer, scheduler, torch.device("cpu"),
                          torch.float32)
    report.update(dp.pretrain_transformer(family, transformer_steps, SEED))
    save_model(root, vae, text_encoder, tokenizer, transformer, scheduler)
    report["dataset_images"] = len(write_dataset(root / "dataset"))
    report["params"] = {"vae": count_params(vae), "text_encoder_2": count_params(text_encoder),
                        "transformer": count_params(transformer)}
    report["bytes"] = {name: folder_size(root / name) for name in ("flux-tiny", "chroma-tiny", "dataset")}
    report["seconds"] = round(time.time() - started, 1)
    _write_json(root / "build.json", report)
    return report


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``build`` (everything) or ``dataset`` (only the LoRA dataset)."""
    parser = argparse.ArgumentParser(prog="python -m trainers.native.demo", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("build", "dataset"))
    parser.add_argument("--out", type=Path, default=DEMO_ROOT, help="target folder (default assets/demo)")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--transformer-steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2, help="fixed for reproducible numbers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "dataset":
        write_dataset(args.out / "dataset")
        return 0
    report = build(args.out, args.vae_steps, args.transformer_steps, args.threads)
    log.info("built in %.0f s: %s", report["seconds"], json.dumps(report["bytes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
