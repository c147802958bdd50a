"""The fake diffusion-pipe checkout prints what diffusion-pipe prints, in its order: run on the scenario of
tests/golden/dp_logs/complete_run.log, its merged output has the same line shapes in the same sequence (numbers,
paths, fingerprints and time stamps aside). Lines of the deepspeed launcher, which the fake does not emulate, are left
out of the comparison."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.dp_golden import cited_lines, pieces, shapes

FAKE = Path(__file__).resolve().parent.parent / "fakes" / "diffusion_pipe"


def scenario(root: Path) -> Path:
    """complete_run.log's run: 8 captioned images (micro batch 2 -> 4 steps an epoch), 2 epochs, warmup 2, an eval set
    of 1 image evaluated before the first step and after each epoch."""
    for name, count in (("cats", 8), ("cats_eval", 1)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(b"png")
            (root / name / f"{i}.txt").write_text("a cat")
        (root / f"{name}.toml").write_text(f"resolutions = [512]\n\n[[directory]]\npath = '{root / name}'\n")
    main = root / "main.toml"
    main.write_text(
        f"output_dir = '{root / 'out'}'\ndataset = '{root / 'cats.toml'}'\nepochs = 2\nmicro_batch_size_per_gpu = 2\n"
        "eval_micro_batch_size_per_gpu = 1\nwarmup_steps = 2\nsave_every_n_epochs = 1\neval_every_n_epochs = 1\n"
        f"eval_datasets = [{{name = 'cats', config = '{root / 'cats_eval.toml'}'}}]\n\n"
        "[model]\ntype = 'chroma'\ndtype = 'bfloat16'\n\n[adapter]\ntype = 'lora'\nrank = 4\n\n"
        "[optimizer]\ntype = 'adamw_optimi'\nlr = 1e-4\n")
    return main


def fake_output(main: Path, *flags: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "train.py", "--deepspeed", "--config", str(main), *flags], cwd=FAKE,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={"FAKE_DP_STEP_S": "0", "PATH": "/usr/bin:/bin", **env}, timeout=60, check=True)
    return done.stdout.decode()


def test_the_fake_prints_the_golden_complete_run_line_for_line(tmp_path):
    golden = [line for cite, line in cited_lines("complete_run.log") if "launcher" not in cite]
    assert shapes(pieces(fake_output(scenario(tmp_path)))) == shapes(pieces("\n".join(golden)))


def test_a_second_run_prints_the_cached_lines_and_regenerate_cache_the_cleared_ones(tmp_path):
    main = scenario(tmp_path)
    fake_output(main)
    cached = pieces(fake_output(main))
    assert not any("Storing new fingerprint" in p or "Creating new shard" in p for p in cached)
    assert sum("[CACHE] Existing cache has fingerprint" in p for p in cached) == 12  # 3 caches x 2 folders x 2 passes
    regenerated = pieces(fake_output(main, "--regenerate_cache"))
    # utils/dataset.py:99-100: regenerate_cache clears each cache in the caching pass, so Cache.init runs again.
    assert sum("[CACHE] Storing new fingerprint" in p for p in regenerated) == 6
    assert sum("Creating new shard: shard_0" in p for p in regenerated) == 6



def step_shapes(text: str) -> list[str]:
    return [s for s in shapes(pieces(text)) if s.startswith("steps:") or "skipped=N, lr=" in s]


def one_epoch(root: Path, steps: int, top: str, optimizer: str) -> Path:
    """``steps`` images, micro batch 1, one epoch, no eval set."""
    (root / "imgs").mkdir(parents=True)
    for i in range(steps):
        (root / "imgs" / f"{i}.png").write_bytes(b"png")
    (root / "ds.toml").write_text(f"resolutions = [512]\n\n[[directory]]\npath = '{root / 'imgs'}'\n")
    main = root / "main.toml"
    main.write_text(f"output_dir = '{root / 'out'}'\ndataset = '{root / 'ds.toml'}'\nepochs = 1\n{top}\n"
                    "[model]\ntype = 'chroma'\ndtype = 'bfloat16'\n\n[adapter]\ntype = 'lora'\nrank = 4\n\n"
                    f"[optimizer]\ntype = 'adamw_optimi'\n{optimizer}\n")
    return main


def test_the_fake_prints_the_golden_step_lines_of_a_gradient_release_run(tmp_path):
    main = one_epoch(tmp_path, 5, "warmup_steps = 2", "lr = 1e-4\ngradient_release = true\nbetas = [0.9, 0.99]")
    golden = "\n".join(line for _cite, line in cited_lines("gradient_release.log"))
    assert step_shapes(fake_output(main)) == step_shapes(golden)


def test_the_fake_prints_the_golden_step_lines_of_a_diverging_run(tmp_path):
    main = one_epoch(tmp_path, 4, "", "lr = 1e-3")
    golden = "\n".join(line for _cite, line in cited_lines("nan_loss.log"))
    assert step_shapes(fake_output(main, FAKE_DP_MODE="nan")) == step_shapes(golden)
