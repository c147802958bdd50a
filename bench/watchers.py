"""How many concurrent gradio_client watchers of one live run get their stream, and how fast.

Method: the studio is served in its own process (``bench/serve_fake.py``, the serving limits of app.py) over the
torch-free trainer double (a step every 50 ms). N watchers, each its own ``gradio_client.Client`` in a thread of
this process, call ``watch_events`` on the run; for each: the time from the start of all watchers to its first
batch, whether it got one within ``--wait`` seconds, and, after a ``stop`` command, whether its stream ended
with the ``finished`` event (the stop is written as a command file: with too few worker threads an API call
would wait behind the streams). The server's thread count is sampled while all watch.

Usage: python bench/watchers.py [--watchers 50] [--wait 60] [--max-threads N (serve with this instead)]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _watch(url: str, run_id: str, started: float, row: dict) -> None:
    from gradio_client import Client

    from trainers.events import parse_event

    try:
        for batch in Client(url, verbose=False).submit(run_id, 0, api_name="/watch_events"):
            row.setdefault("first", time.monotonic() - started)
            row["last"] = parse_event(batch[-1]).kind if batch else row.get("last")
            if row["last"] == "finished":
                return
    except Exception as exc:  # noqa: BLE001 - counted in the report
        row["error"] = repr(exc)[:200]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--watchers", type=int, default=50)
    ap.add_argument("--wait", type=float, default=60)
    ap.add_argument("--max-threads", type=int, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    url_file = work / "url"
    env = {**os.environ, "DP_STUDIO_HOME": str(work / "home"), "PYTHONPATH": str(REPO)}
    if args.max_threads:
        env["DP_STUDIO_BENCH_MAX_THREADS"] = str(args.max_threads)
    server = subprocess.Popen([sys.executable, str(REPO / "bench" / "serve_fake.py"), str(url_file), str(work)],
                              env=env)
    try:
        while not url_file.exists():
            time.sleep(0.2)
        url = url_file.read_text()
        from gradio_client import Client

        control = Client(url, verbose=False)
        run_id = control.predict(str(work / "profile" / "main.toml"), "bench", 0, api_name="/start_run")["run_id"]
        rows: list[dict] = [{} for _ in range(args.watchers)]
        started = time.monotonic()
        threads = [threading.Thread(target=_watch, args=(url, run_id, started, row), daemon=True) for row in rows]
        for t in threads:
            t.start()
        while time.monotonic() - started < args.wait and not all("first" in r or "error" in r for r in rows):
            time.sleep(0.2)
        server_threads = psutil.Process(server.pid).num_threads()
        stop_at = time.monotonic()
        from trainers.commands import send_command

        # As a file, not through the API: with too few worker threads, a request would wait behind the streams.
        send_command(work / "profile" / "out" / run_id, "stop")
        for t in threads:
            t.join(timeout=max(1.0, 60 - (time.monotonic() - stop_at)))
        ended_s = time.monotonic() - stop_at
    finally:
        server.terminate()
    firsts = [r["first"] for r in rows if "first" in r]
    print(flush=True)
    print(f"watchers={args.watchers} max_threads={args.max_threads or 'app default'} cpus={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.1f}")
    print(f"got a stream: {len(firsts)}/{args.watchers}; first batch s: median={statistics.median(firsts):.2f} "
          f"max={max(firsts):.2f}" if firsts else f"got a stream: 0/{args.watchers}")
    print(f"ended with 'finished': {sum(r.get('last') == 'finished' for r in rows)}/{args.watchers} "
          f"(all within {ended_s:.1f} s of the stop); errors: {sum('error' in r for r in rows)}; "
          f"server threads while watching: {server_threads}")


if __name__ == "__main__":
    main()
