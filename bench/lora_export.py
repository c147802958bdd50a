"""Time one LoRA export as the studio runs it: ``python -m trainers.native.export`` in a child process.

Builds a full-size rank-32 Chroma LoRA (19 double + 38 single blocks, hidden 3072, MLP 12288; the 228 fused
original Linears of diffusion-pipe's layout, bf16) in a temporary folder, then times each layout's export,
the child's start-up (imports) included. ``--stacked`` writes the older studio layout instead (q/k/v and
linear1's parts stacked as rank 3r / 4r with a block-diagonal B).

Usage: ``python bench/lora_export.py [--rank 32] [--repeat 3] [--stacked]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, MLP = 3072, 12288
DOUBLE = {"img_attn.qkv": (HIDDEN, 3 * HIDDEN, 3), "txt_attn.qkv": (HIDDEN, 3 * HIDDEN, 3),
          "img_attn.proj": (HIDDEN, HIDDEN, 1), "txt_attn.proj": (HIDDEN, HIDDEN, 1),
          "img_mlp.0": (HIDDEN, MLP, 1), "img_mlp.2": (MLP, HIDDEN, 1),
          "txt_mlp.0": (HIDDEN, MLP, 1), "txt_mlp.2": (MLP, HIDDEN, 1)}
SINGLE = {"linear1": (HIDDEN, 3 * HIDDEN + MLP, 4), "linear2": (HIDDEN + MLP, HIDDEN, 1)}


def _pair(fan_in: int, fan_out: int, parts: int, rank: int, stacked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not stacked or parts == 1:
        return torch.randn(rank, fan_in), torch.randn(fan_out, rank)
    outs = [HIDDEN] * 3 + ([MLP] if parts == 4 else [])
    b = torch.block_diag(*[torch.randn(o, rank) for o in outs])
    return torch.randn(rank * parts, fan_in), b


def build(folder: Path, rank: int, stacked: bool) -> None:
    tensors = {}
    for kind, count, table in (("double_blocks", 19, DOUBLE), ("single_blocks", 38, SINGLE)):
        for i in range(count):
            for name, (fan_in, fan_out, parts) in table.items():
                a, b = _pair(fan_in, fan_out, parts, rank, stacked)
                key = f"diffusion_model.{kind}.{i}.{name}"
                tensors[f"{key}.lora_A.weight"] = a.to(torch.bfloat16)
                tensors[f"{key}.lora_B.weight"] = b.to(torch.bfloat16)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": rank}), encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stacked", action="store_true")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "epoch1"
        build(folder, args.rank, args.stacked)
        print(f"LoRA file: {(folder / 'adapter_model.safetensors').stat().st_size / 2**20:.0f} MiB")
        for layout in ("comfyui", "diffusers", "kohya"):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "trainers.native.export", str(folder), "--layout",
                                       layout, "--out", str(Path(tmp) / f"out_{layout}.safetensors")], cwd=root,
                                      capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{layout} export failed: {done.stderr.strip()}")
                times.append(time.perf_counter() - start)
            print(f"{layout}: median {statistics.median(times):.2f} s, all {[round(t, 2) for t in times]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
