"""Serve dp-studio: ``python app.py`` or ``dp-studio serve`` (http://127.0.0.1:7860 by default).

Flags win over the usual Gradio environment variables (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT). Binding
beyond localhost needs ``--auth USER:PASSWORD``; share links are never opened.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import sys
import threading
from collections.abc import Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dp-studio serve", description=__doc__)
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", DEFAULT_HOST))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)))
    p.add_argument("--auth", default=os.environ.get("DP_STUDIO_AUTH"),
                   help="USER:PASSWORD; required when --host is not a loopback address")
    p.add_argument("--auth-file", default=None,
                   help="a file holding USER:PASSWORD (a Docker secret; env DP_STUDIO_AUTH_FILE)")
    return p.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (and to Gradio, which binds the address inside the brackets): IPv6
    literals such as ``::1`` get brackets, anything else stays as it is."""
    bare = host.removeprefix("[").removesuffix("]")
    try:
        return f"[{bare}]" if ipaddress.ip_address(bare).version == 6 else bare
    except ValueError:
        return host


def check_exposure(host: str, auth: str | None) -> tuple[str, str] | None:
    """The auth pair to use; refuses to expose the studio beyond this machine without one."""
    if auth is None:
        if not is_loopback(host):
            raise SystemExit(f"refusing to serve on {host} without --auth USER:PASSWORD "
                             "(the studio can start training runs and read files); "
                             f"use --host {DEFAULT_HOST} or add --auth.")
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth must look like USER:PASSWORD")
    return user, password


def build(roots=None):
    """The Blocks and their services. Runs are listed from the run roots; no folder is served (studio/served.py)."""
    import studio
    from studio.services import Services
    from trainers.demo_profile import prepare_demo
    from trainers.runs import RunManager

    demo_main = prepare_demo()
    manager = RunManager(roots)
    manager.resume_queue()  # runs queued before a restart still start when the device frees up
    # Runs whose trainer died while no server watched get their ``failed`` event now (trainers/run_death.py).
    threading.Thread(target=manager.runs, daemon=True, name="explain-dead-runs").start()
    services = Services(manager=manager, demo_main=demo_main, allowed_roots=list(manager.roots))
    return studio.build_app(services), services


def launch(blocks, host: str, port: int, auth: tuple[str, str] | None, *, block: bool = True) -> str:
    """Serve ``blocks`` on ``host``:``port``; returns the local URL (``block`` False returns at once, for tests)."""
    from studio.api import MAX_THREADS, QUEUE_SETTINGS
    from studio.layout import CSS, theme

    host = url_host(host)
    # No allowed_paths: the pages' files are published one by one into the served folder (studio/served.py).
    blocks.queue(**QUEUE_SETTINGS).launch(
        server_name=host, server_port=port, auth=auth, share=False, css=CSS, theme=theme(), max_threads=MAX_THREADS,
        footer_links=["api"], quiet=True,
        show_error=True, prevent_thread_lock=not block,
    )
    return f"http://{host}:{port}/"


def main(argv: Sequence[str] | None = None) -> int:
    # Start-up allocates about a million objects that live as long as the server (Gradio, pydantic, the Blocks):
    # the collector's passes over them while importing and building cost ~0.5 s of a ~4 s start
    # (docs/benchmarks.md, Cold start). It is paused until the page is served, then those objects are frozen
    # out of its reach (studio.freeze_startup_objects) and it runs as usual.
    gc.disable()
    try:
        return _serve(argv)
    finally:
        gc.enable()


def _serve(argv: Sequence[str] | None) -> int:
    import studio
    from trainers.hosting import HostingError, apply_space_defaults, resolve_auth

    args = parse_args(argv)
    apply_space_defaults()  # a Hugging Face Space keeps the studio's data in its persistent /data
    try:
        auth = check_exposure(args.host, resolve_auth(args.auth, args.auth_file))
    except HostingError as exc:
        raise SystemExit(str(exc)) from None
    blocks, _services = build()
    print(f"dp-studio on http://{url_host(args.host)}:{args.port}", flush=True)
    launch(blocks, args.host, args.port, auth, block=False)
    studio.freeze_startup_objects()
    gc.enable()
    blocks.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
