"""Drive runs end to end through the named endpoints with gradio_client, as a script would."""

from __future__ import annotations

import pytest
from gradio_client import Client

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve
from trainers.events import parse_event
from trainers.runs import RunManager


@pytest.fixture
def client(tmp_path):
    main = write_pair(tmp_path / "p", max_steps=100000)
    manager = RunManager([tmp_path / "p" / "out"], trainer_module="tests.fakes.trainer")
    blocks, url = serve(Services(manager=manager, demo_main=main, allowed_roots=[tmp_path]))
    yield Client(url, verbose=False), main
    blocks.close()


def test_start_watch_stop_list_through_named_endpoints(client):
    c, main = client
    info = c.predict(str(main), "api run", 0, api_name="/start_run")
    run_id = info["run_id"]
    assert info["status"] in ("starting", "running")
    job = c.submit(run_id, 0, api_name="/watch_events")
    kinds: list[str] = []
    for batch in job:
        kinds += [parse_event(line).kind for line in batch]
        if kinds.count("step") >= 3 and "stop" not in kinds:
            c.predict(run_id, "stop", api_name="/send_command")
            kinds.append("stop")
    assert kinds[0] == "phase" and kinds[-1] == "finished"
    runs = c.predict(api_name="/list_runs")
    assert [r["run_id"] for r in runs] == [run_id]
    assert c.predict(run_id, api_name="/run_info")["status"] in ("stopped", "running")  # pid may linger a moment
    with pytest.raises(Exception, match="stopped|running"):
        c.predict(run_id, "bogus", api_name="/send_command")
