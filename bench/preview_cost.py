"""What previews cost: the share of a demo run's wall time spent rendering them at the default cadence.

Method: the shipped demo profile (``profiles/demo``: 2 prompts x 1 seed, 16 sampling steps with real CFG 4,
64 px, at the start and every 200 steps) runs ``--max-steps`` steps (400 by default) with
``python -m trainers.native`` as the studio starts it (the run folder is built by ``bench/demo_learning.py``).
Each preview round logs its own time (``previews at step N: K images in X s``); the share is their sum over
the run's time from the end of loading (the first phase after ``loading``) to its last event. Goal <= 5 %.

Usage: ``.venv/bin/python bench/preview_cost.py [--max-steps N] [--rounds R]``; prints one JSON line per run
and the median share.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from demo_learning import make_run  # noqa: E402

from trainers.events import load_all  # noqa: E402

ROUND = re.compile(r"previews at step (\d+): (\d+) images in ([\d.]+) s")


def measure(max_steps: int) -> dict:
    """One demo run; its preview rounds and the share of its time they took."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp), max_steps)
        with open(run_dir / "stdout.log", "wb") as log:
            subprocess.run([sys.executable, "-m", "trainers.native", "--run-dir", str(run_dir)], cwd=run_dir,
                           stdout=log, stderr=subprocess.STDOUT, check=False)
        events = load_all(run_dir)
    rounds = [ROUND.match(e.message) for e in events if e.kind == "log" and ROUND.match(e.message)]
    loaded = next(e.t for e in events if e.kind == "phase" and e.phase not in ("starting", "loading", "caching"))
    span = events[-1].t - loaded
    sampling = sum(float(m.group(3)) for m in rounds)
    return {"steps": max(e.step for e in events if e.kind == "step"), "rounds": len(rounds),
            "round_s": [float(m.group(3)) for m in rounds], "sampling_s": round(sampling, 2),
            "run_s": round(span, 2), "share_pct": round(100 * sampling / span, 2), "final": events[-1].kind}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=1, help="demo runs to take the median of")
    args = parser.parse_args()
    shares = []
    for _ in range(args.rounds):
        started = time.time()
        result = measure(args.max_steps)
        print(json.dumps({**result, "wall_s": round(time.time() - started, 1)}), flush=True)
        shares.append(result["share_pct"])
    print(json.dumps({"median_share_pct": statistics.median(shares), "goal_pct": 5.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
