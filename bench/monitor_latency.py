"""Monitor update latency and server memory under N concurrent viewers.

Method: the studio is served in its own process over the torch-free trainer double, which writes a step
event every 50 ms (20 it/s, far faster than real training) and a sample every 5 steps. N viewers (threads)
watch the run through the named ``watch_events`` stream; for every event a viewer receives, latency = receive
time - the time the trainer wrote the event (both on this machine's clock). ``--client sse`` (the default)
reads Gradio's server-sent events directly, as a browser's EventSource does (join the queue, then read
``queue/data``); ``--client gradio_client`` uses gradio_client, whose reader thread polls its message queue
every 50 ms and so adds up to 50 ms of its own.
The server's RSS is sampled every 5 s. Separately, the cost of rendering one monitor frame (fold + plotly
figures + gallery + log) is timed for a run with 5,000 steps, which is what each UI viewer pays per update.

Usage: python bench/monitor_latency.py [--viewers 20] [--seconds 300] [--client sse|gradio_client] [--frames-only]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _viewer(url: str, run_id: str, deadline: float, out: list[float]) -> None:
    from gradio_client import Client

    from trainers.events import parse_event

    job = Client(url, verbose=False).submit(run_id, 0, api_name="/watch_events")
    for batch in job:
        now = time.time()
        out.extend(now - parse_event(line).t for line in batch[-5:])  # newest events of each delivery
        if time.monotonic() > deadline:
            job.cancel()
            return


T_FIELD = re.compile(r'\\"t\\":\s*([0-9.]+)')  # "t": in the event lines, JSON-escaped inside the SSE payload


def _fn_index(url: str, api_name: str) -> int:
    import httpx

    config = httpx.get(f"{url.rstrip('/')}/config", timeout=30).json()
    for index, dep in enumerate(config["dependencies"]):
        if dep.get("api_name") == api_name:
            return dep.get("id", index)
    raise KeyError(api_name)


def _viewer_sse(url: str, run_id: str, deadline: float, out: list[float], fn_index: int) -> None:
    """One viewer as a browser is one: join the queue, then read the server-sent events as they come."""
    import httpx

    base, session = url.rstrip("/") + "/gradio_api", uuid.uuid4().hex
    with httpx.Client(timeout=None) as http:
        http.post(f"{base}/queue/join", json={"data": [run_id, 0], "fn_index": fn_index, "session_hash": session,
                                              "event_data": None, "trigger_id": None}).raise_for_status()
        with http.stream("GET", f"{base}/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                now = time.time()
                out.extend(now - float(t) for t in T_FIELD.findall(line))
                if time.monotonic() > deadline or json.loads(line[5:]).get("msg") == "process_completed":
                    return


def frame_cost(steps: int = 5000, frames: int = 300) -> dict:
    """Milliseconds to render monitor frames of a 5,000-step run with a sample every 50 steps, after start-up
    objects are frozen as the app does: ``full`` = a frame built from scratch (a viewer attaching),
    ``stream`` = the frames of a live stream, one new step each (unchanged outputs skipped)."""
    import gradio  # noqa: F401 - imported before the freeze, as in the app

    import studio
    from studio.tabs.monitor import _frame
    from studio.view import MonitorState, fold
    from trainers.events import SampleEvent, StepEvent

    def step(s: int) -> list:
        out = [StepEvent(step=s, epoch=1, loss=1 / s, lr=1e-4, total_steps=steps + frames)]
        if s % 50 == 0:
            out.append(SampleEvent(step=s, epoch=1, path=f"samples/{s}.png", prompt="p", seed=1))
        return out

    state = fold([e for s in range(1, steps + 1) for e in step(s)], Path("/r"), MonitorState())
    studio.freeze_startup_objects()
    options = (0.9, False, "info", "", 0)
    full, live, sent = [], [], {}
    for _ in range(frames // 5):
        t0 = time.perf_counter()
        _frame(state, "r", options, "")
        full.append(time.perf_counter() - t0)
    for s in range(steps + 1, steps + frames + 1):
        fold(step(s), Path("/r"), state)
        t0 = time.perf_counter()
        _frame(state, "r", options, "", sent)
        live.append(time.perf_counter() - t0)
    return {"steps": steps, **{f"{name}_{stat}_ms": round(1000 * value, 1) for name, times in
                               (("full", full), ("stream", live)) for stat, value in
                               (("median", statistics.median(times)), ("p99", _percentile(times, 0.99)))}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--viewers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--client", choices=("sse", "gradio_client"), default="sse")
    ap.add_argument("--frames-only", action="store_true", help="only time the frame render (no server)")
    args = ap.parse_args()
    if args.frames_only:
        print(f"frame render: {frame_cost()}")
        return
    work = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    url_file = work / "url"
    env = {**__import__("os").environ, "DP_STUDIO_HOME": str(work / "home"), "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, str(REPO / "bench" / "serve_fake.py"), str(url_file), str(work)],
                              env=env)
    try:
        while not url_file.exists():
            time.sleep(0.2)
        url = url_file.read_text()
        from gradio_client import Client

        run_id = Client(url, verbose=False).predict(str(work / "profile" / "main.toml"), "bench", 0,
                                                    api_name="/start_run")["run_id"]
        deadline = time.monotonic() + args.seconds
        latencies: list[float] = []
        if args.client == "sse":
            fn_index = _fn_index(url, "watch_events")
            threads = [threading.Thread(target=_viewer_sse, args=(url, run_id, deadline, latencies, fn_index),
                                        daemon=True) for _ in range(args.viewers)]
        else:
            threads = [threading.Thread(target=_viewer, args=(url, run_id, deadline, latencies), daemon=True)
                       for _ in range(args.viewers)]
        for t in threads:
            t.start()
        proc, rss = psutil.Process(server.pid), []
        while time.monotonic() < deadline:
            rss.append(proc.memory_info().rss / 2**20)  # the web server only; the trainer is its own process
            time.sleep(5)
        for t in threads:
            t.join(timeout=10)
        Client(url, verbose=False).predict(run_id, "stop", api_name="/send_command")  # the run is detached
    finally:
        server.terminate()
    n = len(rss) // 5 or 1
    print(f"client={args.client} viewers={args.viewers} seconds={args.seconds:.0f} deliveries={len(latencies)}")
    print(f"latency ms: median={1000 * statistics.median(latencies):.1f} "
          f"p99={1000 * _percentile(latencies, 0.99):.1f} max={1000 * max(latencies):.1f}")
    print(f"server RSS MiB: first minute avg={statistics.mean(rss[:n]):.1f} "
          f"last minute avg={statistics.mean(rss[-n:]):.1f} max={max(rss):.1f}")
    per_minute = [statistics.mean(rss[i:i + 12]) for i in range(0, len(rss), 12)]
    print("server RSS MiB per minute: " + ", ".join(f"{m:.1f}" for m in per_minute))
    print(f"frame render: {frame_cost()}")


if __name__ == "__main__":
    main()
