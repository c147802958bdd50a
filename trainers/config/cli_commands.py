"""``dp-studio validate`` and ``dp-studio profile ...``: registrars appended to ``trainers.cli.REGISTRARS``.

Exit codes: 0 ok (warnings allowed), 1 problems found / operation refused, 2 a file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainers.config.issues import ConfigIssue, ConfigParseError
from trainers.config.validate import is_valid, validate_files

EXIT_OK, EXIT_INVALID, EXIT_UNPARSEABLE = 0, 1, 2


def add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a diffusion-pipe main TOML and the dataset TOML it names")
    p.add_argument("main", type=Path, help="main TOML (relative paths resolve against its folder, or the current "
                   "directory when its dataset file is found only from there)")
    p.add_argument("--skip-path-checks", action="store_true", help="do not check that files and folders exist")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs the run will use (default 1)")
    p.add_argument("--backend", choices=("auto", "native", "diffusion-pipe"), default=None,
                   help="check for this trainer (default: the file's [studio] backend, else auto: native for "
                        "Chroma, diffusion-pipe for other types)")
    p.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    try:
        issues = validate_files(args.main, skip_path_checks=args.skip_path_checks, num_gpus=args.num_gpus,
                                backend=args.backend)
    except ConfigParseError as exc:
        print(exc.format(), file=sys.stderr)
        return EXIT_UNPARSEABLE
    _print_issues(issues)
    if is_valid(issues):
        print(f"{args.main}: valid" + (f" ({len(issues)} warning(s))" if issues else ""))
        return EXIT_OK
    return EXIT_INVALID


def _print_issues(issues: list[ConfigIssue]) -> None:
    for issue in issues:
        print(issue.format())


def add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="manage saved profiles (config pairs with history)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    imp = verbs.add_parser("import", help="import a main TOML (its dataset TOML comes along) or a zip")
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", required=True, help="name of the new profile")
    exp = verbs.add_parser("export", help="write a profile's pair into a folder (original file names)")
    exp.add_argument("name")
    exp.add_argument("--out", type=Path, required=True, help="folder (or a .zip file with --zip)")
    exp.add_argument("--version", type=int, default=None, help="an older version (see history)")
    exp.add_argument("--zip", action="store_true", help="write one zip file instead of two TOMLs")
    verbs.add_parser("list", help="list profiles")
    diff = verbs.add_parser("diff", help="key-by-key differences of two profiles")
    diff.add_argument("a")
    diff.add_argument("b")
    hist = verbs.add_parser("history", help="saved versions of a profile")
    hist.add_argument("name")
    back = verbs.add_parser("rollback", help="make an old version the newest again")
    back.add_argument("name")
    back.add_argument("version", type=int)
    p.set_defaults(handler=_profile)


def _profile(args: argparse.Namespace) -> int:
    from trainers.profiles import ProfileError, ProfileStore

    store = ProfileStore()
    handlers = {"import": _import, "export": _export, "list": _list, "diff": _diff, "history": _history,
                "rollback": _rollback}
    try:
        return handlers[args.verb](store, args)
    except ConfigParseError as exc:
        print(exc.format(), file=sys.stderr)
        return EXIT_UNPARSEABLE
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _import(store, args: argparse.Namespace) -> int:  # noqa: ANN001 - ProfileStore, imported lazily
    from trainers.profiles import import_path

    report = import_path(store, args.file, args.name)
    for note in report.notes:
        print(f"note: {note}")
    _print_issues(report.issues)
    print(f"imported {report.profile.name!r} (version {report.version.number}): "
          f"{report.profile.main_name} + {report.profile.dataset_name}")
    return EXIT_OK


def _export(store, args: argparse.Namespace) -> int:  # noqa: ANN001
    from trainers.profiles import export_zip

    if args.zip:
        out = args.out if args.out.suffix == ".zip" else args.out / f"{store.get(args.name).slug}.zip"
        print(export_zip(store, args.name, out, args.version))
        return EXIT_OK
    for path in store.export(args.name, args.out, args.version):
        print(path)
    return EXIT_OK


def _list(store, args: argparse.Namespace) -> int:  # noqa: ANN001
    for info in store.list():
        marks = ", ".join(m for m, on in (("default", info.default), ("shipped", info.shipped)) if on)
        print(f"{info.name}\tv{info.version}\t{info.updated}" + (f"\t({marks})" if marks else ""))
    return EXIT_OK


def _diff(store, args: argparse.Namespace) -> int:  # noqa: ANN001
    from trainers.profiles import diff_profiles

    entries = diff_profiles(store, args.a, args.b)
    for entry in entries:
        print(entry.format())
    if not entries:
        print("no differences")
    return EXIT_OK


def _history(store, args: argparse.Namespace) -> int:  # noqa: ANN001
    for version in store.history(args.name):
        print(f"{version.number}\t{version.created}\t{version.message}")
    return EXIT_OK


def _rollback(store, args: argparse.Namespace) -> int:  # noqa: ANN001
    report = store.rollback(args.name, args.version)
    print(f"{report.profile.name!r} is now version {report.version.number} (content of version {args.version})")
    return EXIT_OK


REGISTRARS = [add_validate, add_profile]
