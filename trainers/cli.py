"""The ``dp-studio`` command line: one sub-command per job the studio's page does, each registered by a small
function. ``EXIT_CODES`` (printed by ``dp-studio --help``) is the contract every sub-command keeps."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from trainers import cli_doctor, cli_runs
from trainers.config.cli_commands import add_profile, add_validate
from trainers.lora_check import add_check_lora
from trainers.train_cli import add_train

Handler = Callable[[argparse.Namespace], int]


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the studio web app (default http://127.0.0.1:7860)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1, env GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, env GRADIO_SERVER_PORT)")
    p.add_argument("--auth", default=None, help="USER:PASSWORD, required to bind beyond localhost")
    p.add_argument("--auth-file", default=None, help="a file holding USER:PASSWORD (a Docker secret; env "
                                                      "DP_STUDIO_AUTH_FILE)")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import app  # the top-level module; imported lazily so other sub-commands start fast

    return app.main(_serve_argv(args))


def _serve_argv(args: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    if args.host:
        argv += ["--host", args.host]
    if args.port:
        argv += ["--port", str(args.port)]
    if args.auth:
        argv += ["--auth", args.auth]
    if args.auth_file:
        argv += ["--auth-file", args.auth_file]
    return argv


def _add_prepare_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-demo", help="write the embedded demo profile into the studio's data folder")
    p.set_defaults(handler=_prepare_demo)


def _prepare_demo(args: argparse.Namespace) -> int:
    from trainers.demo_profile import prepare_demo

    main_path = prepare_demo()
    print(f"demo profile ready: {main_path}")
    return 0


# Sub-command registrars; other modules append theirs here (validate, profile, train ...).
REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_serve, add_validate, add_train, *cli_runs.REGISTRARS, *cli_doctor.REGISTRARS, add_profile, add_check_lora,
    _add_prepare_demo]

EXIT_CODES = """exit codes:
  0  done: valid, trained to the end, exported, no problem found
  1  problems found or the job refused/failed (the message names the file or field and the fix)
  2  usage error, or a file that cannot be read or parsed (check-lora: not a LoRA)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dp-studio", description="dp-studio: a training studio for LoRAs.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
