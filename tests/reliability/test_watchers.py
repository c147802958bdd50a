"""Many gradio_client watchers of one live run: every one gets its stream, from the first event to the end."""

from __future__ import annotations

import os
import threading
import time
import traceback

import pytest
from gradio_client import Client

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve
from trainers.events import parse_event
from trainers.runs import RunManager

pytestmark = pytest.mark.integration
# Past Gradio's default of 40 worker threads, which served 40 streams and starved the rest (bench/watchers.py: 50).
WATCHERS = int(os.environ.get("DP_STUDIO_WATCHERS", "45"))


def _watch(url: str, run_id: str, got: dict, i: int, stop: threading.Event) -> None:
    try:
        # gradio_client reads /config and /info with httpx's 5 s default; 45 clients sharing this process's GIL
        # with the server can take longer than that on 2 busy cores (bench/watchers.py measures with the default).
        job = Client(url, verbose=False, httpx_kwargs={"timeout": 60}).submit(run_id, 0, api_name="/watch_events")
        for batch in job:
            kinds = [parse_event(line).kind for line in batch]
            got.setdefault(i, {"first": time.monotonic(), "kinds": []})["kinds"] += kinds
            if "finished" in kinds or stop.is_set():
                return
    except Exception:  # noqa: BLE001 - recorded and asserted on below
        lines = traceback.format_exc().splitlines()
        got.setdefault(i, {"first": None, "kinds": []})["error"] = " | ".join(
            ln.strip() for ln in lines if "gradio_client" in ln or "Error" in ln)


def test_every_watcher_of_a_live_run_gets_its_stream(tmp_path):
    main = write_pair(tmp_path / "p", max_steps=100000)
    manager = RunManager([tmp_path / "p" / "out"], trainer_module="tests.fakes.trainer")
    blocks, url = serve(Services(manager=manager, demo_main=main, allowed_roots=[tmp_path]))
    stop = threading.Event()
    try:
        # Started directly: start_run validates the pair, and this minimal one is for the trainer double only.
        run_id = manager.start(main, name="load")
        got: dict = {}
        threads = [threading.Thread(target=_watch, args=(url, run_id, got, i, stop), daemon=True)
                   for i in range(WATCHERS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len([g for g in got.values() if g["first"]]) < WATCHERS:
            time.sleep(0.2)
        streaming = sorted(i for i, g in got.items() if g["first"])
        assert len(streaming) == WATCHERS, {i: g.get("error") for i, g in got.items() if not g["first"]}
        manager.send(run_id, "stop")
        for t in threads:
            t.join(60)
        ended = [i for i, g in got.items() if g["kinds"] and g["kinds"][-1] == "finished"]
        assert len(ended) == WATCHERS, {i: (g["kinds"][-3:], g.get("error")) for i, g in got.items()}
        assert all(g["kinds"][0] == "phase" and "step" in g["kinds"] for g in got.values())
    finally:
        stop.set()
        for run in manager.runs():
            if run.live:
                manager.kill(run.run_id)
        blocks.close()
