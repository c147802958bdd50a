"""Per-step overhead of the studio's native trainer against a minimal bare training loop.

Method: both sides train the shipped demo profile (``profiles/demo``: tiny Chroma, LoRA rank 8, adamw_optimi,
batch 4, float32) with previews, eval and saves off, in one process on one thread, on the same model, LoRA,
optimizer and cached latents (one set-up shared by both, so neither side's memory is laid out better than the
other's; the weights simply keep training from round to round). The studio side runs the real per-step path of
``trainers.native.loop.Trainer`` (command polling, phase, ``_optimizer_step`` with its divergence guard,
step event, TensorBoard/metrics, ``_after_step``); the bare side is the loop a person would write: pre-built
batches (the same epochs' batches the studio side builds as it goes), timesteps + noise, ``predict``, MSE, backward, clip, ``optimizer.step``, ``zero_grad``. Rounds of
``--steps`` steps alternate A/B (``--rounds`` of each, after one warm-up round of each); the ratio studio/bare
of wall time and of CPU time per step is given as median, min and max over rounds, with a 95 % bootstrap
interval of the median. Goal <= 1.02, shown when the interval's upper end is at most 1.02. A cProfile of
one extra studio round lists where the studio's own code spends its time.

Usage: ``.venv/bin/python bench/overhead.py [--steps 40] [--rounds 8]``; prints JSON and the profile summary.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tomlkit
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from demo_learning import make_run  # noqa: E402

from trainers.events import EventWriter  # noqa: E402
from trainers.native import cache as cache_mod  # noqa: E402
from trainers.native.flow import flow_loss, noisy_input, sample_timesteps  # noqa: E402
from trainers.native.loop import Trainer  # noqa: E402
from trainers.native.settings import load_run  # noqa: E402


def quiet_run(root: Path) -> Path:
    """The demo run folder with previews, eval and periodic saves off."""
    run_dir = make_run(root, None)
    main = run_dir / "chroma_demo.toml"
    doc = tomlkit.parse(main.read_text(encoding="utf-8"))
    doc["studio"]["sample_prompts"], doc["studio"]["sample_at_start"] = [], False
    doc["save_every_n_epochs"] = 100000
    main.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return run_dir


def ready_trainer(run_dir: Path) -> Trainer:
    """A trainer with its model, LoRA, cache and optimizer set up (either side takes its parts from one)."""
    trainer = Trainer(load_run(run_dir), EventWriter(run_dir))
    trainer.setup()
    return trainer


def studio_steps(trainer: Trainer, state: dict, steps: int) -> None:
    """The loop body of ``Trainer._train`` for ``steps`` optimizer steps."""
    for _ in range(steps):
        micro_batches = next(state["batches"], None)
        if micro_batches is None:
            trainer.epoch += 1
            state["batches"] = iter(cache_mod.epoch_batches(trainer.cache, trainer.micro_batch, trainer.s.grad_accum,
                                                            trainer.s.seed, trainer.epoch))
            micro_batches = next(state["batches"])
        trainer._handle_commands()
        trainer._set_phase("training", total=trainer.total_steps)
        trainer._optimizer_step(micro_batches)
        trainer._after_step()


def bare_batches(trainer: Trainer, steps: int) -> list:
    """The batches of the first epochs (``steps`` of them, epoch after epoch, in the order the studio side meets
    them), built once, as a minimal loop's data loader would hold them."""
    out, epoch = [], 0
    while len(out) < steps:
        epoch += 1
        batches = cache_mod.epoch_batches(trainer.cache, trainer.micro_batch, 1, trainer.s.seed, epoch)
        out += [cache_mod.batch_tensors(trainer.cache, mb[0], 0.0, trainer.rng)[:2] for mb in batches]
    return out[:steps]


def bare_steps(side: Trainer, data: list, state: dict, steps: int) -> None:
    """A minimal training loop on the same model, LoRA, optimizer and batches."""
    family, params = side.family, [p for _, p in side.params]
    for _ in range(steps):
        x0, text = data[state["i"] % len(data)]
        state["i"] += 1
        t = sample_timesteps(side.tcfg, x0.shape[0], family.image_seq_len(x0.shape), side.generator)
        noise = torch.randn(x0.shape, generator=side.generator)
        x_t, target = noisy_input(x0, noise, t)
        loss = flow_loss(family.predict(x_t, t, text), target, side.loss_cfg, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, side.s.grad_clip)
        side.optimizer.step()
        side.optimizer.zero_grad(set_to_none=True)
        loss.item()


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def profile_summary(fn, top: int = 15) -> str:
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    out.write("The studio's own functions (trainers/), by cumulative time:\n")
    stats.sort_stats("cumulative").print_stats("trainers/", top)
    return out.getvalue()


def spread(values: list[float]) -> dict:
    """Median, min, max, and a 95 % bootstrap interval of the median (resampling the rounds), so the result says
    whether the noise is smaller than the distance to the goal."""
    import numpy as np

    rng = np.random.default_rng(0)
    samples = np.median(rng.choice(np.array(values), size=(10_000, len(values))), axis=1)
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "median_95ci": [round(float(low), 4), round(float(high), 4)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of each side (after one warm-up each)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        studio = bare = ready_trainer(quiet_run(Path(tmp) / "a"))
        torch.set_num_threads(1)  # the trainer's set-up takes every core (pick_device): back to one
        data = bare_batches(bare, (args.rounds + 1) * args.steps)
        s_state, b_state = {"batches": iter(())}, {"i": 0}
        run_a = lambda: studio_steps(studio, s_state, args.steps)  # noqa: E731
        run_b = lambda: bare_steps(bare, data, b_state, args.steps)  # noqa: E731
        run_a(), run_b()  # warm-up
        rows = []
        for r in range(args.rounds):
            order = (run_a, run_b) if r % 2 == 0 else (run_b, run_a)
            got = {fn: timed(fn) for fn in order}
            rows.append((got[run_a], got[run_b]))
        profile = profile_summary(lambda: studio_steps(studio, s_state, 40))
        studio.metrics.close()
    wall = [a[0] / b[0] for a, b in rows]
    cpu = [a[1] / b[1] for a, b in rows]
    result = {"steps_per_round": args.steps, "rounds": args.rounds,
              "studio_step_ms": round(1000 * statistics.median(a[0] for a, _ in rows) / args.steps, 2),
              "bare_step_ms": round(1000 * statistics.median(b[0] for _, b in rows) / args.steps, 2),
              "wall_ratio": spread(wall), "cpu_ratio": spread(cpu), "goal": 1.02,
              "guard_every": studio.guard.every}
    print(profile)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
