"""Cold start: seconds from launching the studio to its first page, against a one-Markdown Gradio app.

Method: each side is a fresh ``python`` process on a free port, started with an empty ``DP_STUDIO_HOME``;
the clock runs from the spawn until ``GET /`` first answers 200 (polled every 50 ms). The studio side is
``app.py --port P`` (its demo profile is prepared on first start, as for a new user, in that empty home);
the baseline is ``gr.Blocks`` holding one ``gr.Markdown``, launched with the studio's own flags (queue
settings, css, max_threads, quiet). Rounds alternate studio/baseline; the ratio of medians is reported with
min and max of the per-round ratios. Goal <= 1.2. The studio pauses the garbage collector until its page is
served (app.py ``main``); a third side, the baseline with the collector paused the same way, shows what the
studio's own building costs over Gradio's, with that saving taken out. The project's bytecode is compiled
first (as on every start after the first), so neither side pays for compiling it.

Usage: ``.venv/bin/python bench/cold_start.py [--rounds 3]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BASELINE = """
import sys
import gradio as gr
from studio.api import MAX_THREADS, QUEUE_SETTINGS
from studio.layout import CSS
with gr.Blocks() as demo:
    gr.Markdown("# hello")
demo.queue(**QUEUE_SETTINGS).launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), share=False, css=CSS,
                                    max_threads=MAX_THREADS, footer_links=["api"], quiet=True, show_error=True)
"""

BASELINE_GC_PAUSED = "import gc\ngc.disable()\n" + BASELINE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_page_s(argv: list[str], port: int, timeout_s: float = 180.0) -> float:
    """Seconds from spawning ``argv`` until http://127.0.0.1:port/ answers 200."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "DP_STUDIO_HOME": home, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO)}
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - started < timeout_s:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                        if resp.status == 200:
                            return time.perf_counter() - started
                except OSError:
                    time.sleep(0.05)
            raise TimeoutError(f"{argv} served nothing on port {port} within {timeout_s} s")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", "studio", "trainers", "app.py"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    sides = {"studio": [sys.executable, "app.py", "--port"], "baseline": [sys.executable, "-c", BASELINE],
             "baseline_gc_paused": [sys.executable, "-c", BASELINE_GC_PAUSED]}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            port = free_port()
            times[name].append(first_page_s(sides[name] + [str(port)], port))
    result = {f"{name}_s": [round(t, 2) for t in ts] for name, ts in times.items()}
    for name in ("baseline", "baseline_gc_paused"):
        ratios = [s / b for s, b in zip(times["studio"], times[name], strict=True)]
        result[f"vs_{name}"] = {"ratio_of_medians": round(statistics.median(times["studio"])
                                                          / statistics.median(times[name]), 3),
                                "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
    print(json.dumps({**result, "goal": 1.2}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
