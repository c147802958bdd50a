"""``dp-studio doctor | dataset | demo``: the environment check, a dataset scan and the embedded demo.

Exit codes: 0 fine, 1 problems found (each printed with its fix) or the job failed, 2 usage error or a file that
cannot be read.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_PROBLEMS, EXIT_UNREADABLE = 0, 1, 2
PACKAGES = ("torch", "diffusers", "peft", "transformers", "gradio", "safetensors", "deepspeed")


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report: ``ok``, ``warning`` or ``error``, what was found and the fix."""

    level: str
    message: str
    fix: str = ""

    def format(self) -> str:
        mark = {"ok": "ok     ", "warning": "warning", "error": "ERROR  "}[self.level]
        return f"[{mark}] {self.message}" + (f"\n          fix: {self.fix}" if self.fix else "")


def python_findings() -> list[Finding]:
    return [Finding("ok", f"Python {platform.python_version()} ({sys.executable})")]


def package_findings() -> list[Finding]:
    found = []
    for name in PACKAGES:
        try:
            found.append(Finding("ok", f"{name} {importlib.metadata.version(name)}"))
        except importlib.metadata.PackageNotFoundError:
            level = "warning" if name == "deepspeed" else "error"
            found.append(Finding(level, f"{name} is not installed", "run `make venv` (installs the pinned set)"))
    return found


def gpu_findings() -> list[Finding]:
    """GPUs from NVML (torch-free); none is a warning: the demo runs on CPU, real LoRAs want a GPU."""
    from trainers.resources import snapshot

    res = snapshot()
    if not res.gpus:
        return [Finding("warning", f"no GPU found ({res.gpu_note or 'NVML reports none'})",
                        "the demo trains on CPU; a Chroma LoRA needs an NVIDIA GPU with its driver (nvidia-smi)")]
    return [Finding("ok", f"GPU {g.index}: {g.name}, {g.mem_total_gb:.0f} GiB ({g.mem_used_gb:.1f} GiB used)")
            for g in res.gpus]


def checkout_findings(main: Path | None) -> list[Finding]:
    """diffusion-pipe checkout health ([studio] of ``main`` when given, else the environment)."""
    from trainers.diffusion_pipe.install import checkout_health

    studio, base = {}, None
    if main is not None:
        import tomllib

        studio = tomllib.loads(main.read_text(encoding="utf-8")).get("studio") or {}
        base = main.parent
    health = checkout_health(studio, base=base)
    if health.root is None and main is None:
        return [Finding("warning", "no diffusion-pipe checkout configured (only needed for model types other than "
                                   "Chroma)", next(i.fix for i in health.issues))]
    found = [Finding(i.level, i.message, i.fix) for i in health.issues]
    if health.ok:
        version = ".".join(map(str, health.python_version)) if health.python_version else "unknown"
        found.insert(0, Finding("ok", f"diffusion-pipe checkout {health.root} (launcher {' '.join(health.launcher)}, "
                                      f"Python {version})"))
    return found


def studio_findings() -> list[Finding]:
    from trainers.paths import default_runs_root, studio_home

    home = studio_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return [Finding("error", f"studio folder {home} is not writable ({exc})",
                        "set DP_STUDIO_HOME to a writable folder")]
    return [Finding("ok", f"studio folder {home} (runs in {default_runs_root()})")]


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check Python, packages, GPUs, the studio folder and the diffusion-pipe "
                                      "checkout; every problem comes with its fix")
    p.add_argument("main", type=Path, nargs="?", default=None,
                   help="a main TOML whose [studio] diffusion_pipe_path to check (default: DP_STUDIO_DIFFUSION_PIPE)")
    p.set_defaults(handler=doctor)


def doctor(args: argparse.Namespace) -> int:
    findings = python_findings() + package_findings() + gpu_findings() + studio_findings()
    try:
        findings += checkout_findings(args.main)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.main}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    for finding in findings:
        print(finding.format())
    errors = sum(f.level == "error" for f in findings)
    print(f"{errors} problem(s)" if errors else "all checks passed")
    return EXIT_PROBLEMS if errors else EXIT_OK


def add_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="scan a dataset TOML (or an image folder) as the trainer reads it: buckets, "
                                       "steps per epoch and health checks")
    p.add_argument("source", type=Path, help="a dataset TOML (its own resolutions) or a folder of images")
    p.add_argument("--resolution", type=int, default=1024, help="bucket resolution for a folder (default 1024)")
    p.add_argument("--trigger", default="", help="a word every caption should hold")
    p.add_argument("--global-batch", type=int, default=1, help="micro batch x accumulation (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(handler=dataset)


def report_dict(report) -> dict:  # noqa: ANN001 - DatasetReport, imported lazily (it needs Pillow)
    """The scan as plain data (what ``--json`` prints)."""
    return {"source": str(report.source), "settings": report.settings, "global_batch": report.global_batch,
            "images": [{"file": str(i.path), "width": i.width, "height": i.height, "captions": i.captions,
                        "examples": i.examples, "buckets": [list(b) for b in i.buckets], "issues": i.issues}
                       for i in report.images],
            "buckets": [{"size": list(b.size), "aspect": b.ar, "images": b.images, "examples": b.examples,
                         "steps": b.steps, "dropped": b.dropped} for b in report.buckets],
            "problems": dict(report.problems), "duplicates": [list(d) for d in report.duplicates]}


def dataset(args: argparse.Namespace) -> int:
    from trainers.datasets.report import DatasetReportError, analyse

    try:
        report = analyse(args.source, resolution=args.resolution, trigger=args.trigger,
                         global_batch=args.global_batch)
    except DatasetReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        print(json.dumps(report_dict(report), indent=2))
    else:
        print(report.summary_markdown().replace("**", "").replace("`", ""))
        for row in report.bucket_table():
            print("bucket " + "  ".join(cell for cell in row if cell))
        print(report.health_markdown().replace("**", "").replace("`", ""))
    return EXIT_PROBLEMS if report.problems else EXIT_OK


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train the embedded tiny Chroma demo headless (CPU is enough; Ctrl-C stops "
                                    "and saves)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--prepare-only", action="store_true", help="only write the demo profile and print its path")
    p.set_defaults(handler=demo)


def demo(args: argparse.Namespace) -> int:
    from trainers.demo_profile import prepare_demo

    main_path = prepare_demo()
    print(f"demo profile ready: {main_path}", flush=True)
    if args.prepare_only:
        return EXIT_OK
    from trainers.train_cli import train

    return train(argparse.Namespace(main=main_path, max_steps=args.max_steps, name="demo", resume=None))


REGISTRARS = [add_doctor, add_dataset, add_demo]
