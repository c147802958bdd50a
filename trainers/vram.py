"""A VRAM fit estimate for a Chroma or Flux LoRA run, from the settings alone (torch-free, before any download).

The model is counted from the architecture both share (19 double + 38 single blocks, width 3072, MLP 12288; Flux
adds modulation Linears to every block);
LoRA sizes from the Linear layers diffusion-pipe targets; activations per token and block from two
constants (with and without activation checkpointing). It is an estimate: the constants are stated here
and in docs/benchmarks.md, and real runs report their peak memory in the monitor.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.config.registry import MODEL_TYPES

GB = 2**30
CHROMA_PARAMS = 8.9e9
# Trained-model parameters of each type the native trainer trains (trainers/config/registry.py native_params).
MODEL_PARAMS = {name: info.native_params for name, info in MODEL_TYPES.items() if info.native_params}
DOUBLE_BLOCKS, SINGLE_BLOCKS, WIDTH, MLP = 19, 38, 3072, 12288
BLOCK_SHARE = 0.985  # fraction of the parameters inside the blocks (what block swap can move to RAM)
TEXT_TOKENS = 512  # Chroma's T5 sequence length
# Bytes of activations kept per token and block, in bf16: whole block when gradients flow through it
# uncheckpointed; just the block input (+ recomputation of one block) with activation checkpointing.
ACT_BYTES_FULL = WIDTH * 2 * 34
ACT_BYTES_CHECKPOINTED = WIDTH * 2 * 1
OVERHEAD_GB = 1.2  # CUDA context, allocator slack, VAE-free cached latents
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}
CARDS_GB = (8, 12, 16, 24, 32, 48, 80)


def lora_params(rank: int, model: str = "chroma") -> int:
    """Trainable parameters of a rank-``rank`` LoRA on the Linears the family of ``model`` targets: the
    registry's ``lora_params_per_rank`` where a family states it, else every Linear of Chroma's (or Flux's)
    blocks."""
    info = MODEL_TYPES.get(model)
    if info is not None and info.lora_params_per_rank:
        return rank * info.lora_params_per_rank
    square = WIDTH + WIDTH
    wide = WIDTH + MLP
    double = 8 * square + 4 * wide  # q,k,v,out for image and text; two MLPs in, two out
    single = 3 * square + wide + (WIDTH + MLP + WIDTH)  # q,k,v; proj_mlp; proj_out (concat -> width)
    if model == "flux":  # Flux's blocks also hold their modulation Linears (6 and 3 times the width out)
        double += 2 * (WIDTH + 6 * WIDTH)
        single += WIDTH + 3 * WIDTH
    return rank * (DOUBLE_BLOCKS * double + SINGLE_BLOCKS * single)


@dataclass(frozen=True)
class VramSettings:
    resolution: int = 512
    batch: int = 1
    rank: int = 32
    transformer_dtype: str = "bfloat16"
    adapter_dtype: str = "bfloat16"
    optimizer: str = "adamw_optimi"
    activation_checkpointing: bool = False
    blocks_to_swap: int = 0
    model: str = "chroma"  # [model] type: "chroma" or "flux" (same block layout, Flux's blocks are larger)


@dataclass(frozen=True)
class VramEstimate:
    parts: dict[str, float]  # GB per part

    @property
    def total_gb(self) -> float:
        return sum(self.parts.values())

    def fits(self, card_gb: float) -> bool:
        return self.total_gb <= card_gb * 0.95  # leave the driver its share

    def smallest_card(self) -> int | None:
        return next((c for c in CARDS_GB if self.fits(c)), None)


def _optimizer_bytes(optimizer: str, adapter_dtype: str) -> int:
    low = DTYPE_BYTES.get(adapter_dtype, 2)
    name = optimizer.lower()
    if name in ("adamw_optimi", "stableadamw"):
        return 2 * low + (low if low == 2 else 0)  # states in the param dtype, + Kahan buffer in bf16
    if name in ("adamw8bit", "adamw8bitkahan"):
        return 2 + (low if name.endswith("kahan") else 0)
    if name == "sgd":
        return 4
    return 8  # torch AdamW and most pytorch_optimizer classes: two fp32 states


def estimate(s: VramSettings) -> VramEstimate:
    """GB per part for the given settings."""
    blocks = DOUBLE_BLOCKS + SINGLE_BLOCKS
    resident = 1 - BLOCK_SHARE * min(s.blocks_to_swap, blocks - 2) / blocks
    base = MODEL_PARAMS.get(s.model, CHROMA_PARAMS) * resident * DTYPE_BYTES.get(s.transformer_dtype, 2)
    n_lora = lora_params(s.rank, s.model)
    adapter = DTYPE_BYTES.get(s.adapter_dtype, 2)
    tokens = (s.resolution // 16) ** 2 + TEXT_TOKENS
    per_block = ACT_BYTES_CHECKPOINTED if s.activation_checkpointing else ACT_BYTES_FULL
    activations = s.batch * tokens * per_block * blocks
    if s.activation_checkpointing:
        activations += s.batch * tokens * ACT_BYTES_FULL  # one block recomputed at a time
    return VramEstimate({
        "base weights": base / GB,
        "LoRA weights + grads": n_lora * 2 * adapter / GB,
        "optimizer state": n_lora * _optimizer_bytes(s.optimizer, s.adapter_dtype) / GB,
        "activations": activations / GB,
        "overhead": OVERHEAD_GB,
    })


def advice(s: VramSettings, card_gb: int) -> list[str]:
    """What to change, cheapest first, so the run fits a ``card_gb`` card."""
    tips = []
    if estimate(s).fits(card_gb):
        return tips
    if not s.activation_checkpointing:
        tips.append("turn on activation_checkpointing (slower steps, far less activation memory)")
        s = VramSettings(**{**s.__dict__, "activation_checkpointing": True})
    if not estimate(s).fits(card_gb) and DTYPE_BYTES.get(s.transformer_dtype, 2) > 1:
        tips.append("store the transformer in float8 (transformer_dtype = 'float8')")
        s = VramSettings(**{**s.__dict__, "transformer_dtype": "float8"})
    for swap in range(2, DOUBLE_BLOCKS + SINGLE_BLOCKS - 1, 2):
        if estimate(s).fits(card_gb):
            break
        s = VramSettings(**{**s.__dict__, "blocks_to_swap": swap})
    if s.blocks_to_swap:
        tips.append(f"swap {s.blocks_to_swap} blocks to RAM (blocks_to_swap = {s.blocks_to_swap}; the "
                    "diffusion-pipe backend only)")
    if not estimate(s).fits(card_gb):
        tips.append("lower the batch size or the resolution")
    return tips
