"""Serve the studio over the torch-free trainer double (for benchmarks of the UI side only).

Usage: python bench/serve_fake.py PORT WORKDIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import studio  # noqa: E402
from studio.services import Services  # noqa: E402
from tests.conftest import write_pair  # noqa: E402
from tests.e2e.conftest import serve  # noqa: E402
from trainers.runs import RunManager  # noqa: E402


def main() -> None:
    port_file, work = Path(sys.argv[1]), Path(sys.argv[2])
    main_toml = write_pair(work / "profile", max_steps=10_000_000)
    manager = RunManager([work / "profile" / "out"], trainer_module="tests.fakes.trainer")
    _, url = serve(Services(manager=manager, demo_main=main_toml, allowed_roots=[work]))
    studio.freeze_startup_objects()  # as app.py does
    port_file.write_text(url)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
