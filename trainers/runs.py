"""RunManager: starts runs as detached child processes and reads their state back from the run folder.

The run folder is the truth (docs/run-folder.md). Nothing here keeps state that the folder and the live
pid cannot rebuild, so a restarted web server sees exactly what the previous one saw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from trainers.checkpoints import find_point, resume_points, saves_root
from trainers.commands import Command, send_command
from trainers.config import toml_io
from trainers.config.native_support import backend_of
from trainers.config.paths_check import config_base
from trainers.config.secrets import scrub_run_copy
from trainers.event_hub import EventHub
from trainers.events import Event, EventWriter, FailedEvent, LogEvent, ResumedEvent, load_all
from trainers.files import atomic_write_json
from trainers.paths import REPO_ROOT, default_runs_root, studio_home, user_path
from trainers.run_death import claim, explain_death, leg_closed
from trainers.run_queue import RunQueue
from trainers.run_status import RunStatus, create_time, derive_status, pid_alive, waits_in_queue
from trainers.safe_paths import PathRefused, check_name, check_root, is_within, resolve_under, within_any

RUN_FILE = "run.json"
PUMP_EVERY_S = 1.0
ADOPT_EVERY_S = 30.0  # how often an output folder is scanned for runs started outside the studio
EXTERNAL_LIVE_S = 600.0  # an adopted run whose files changed this recently counts as still training
# The child each backend runs as ``python -m MODULE --run-dir RUN_DIR``; both write the same events.
BACKEND_MODULES = {"native": "trainers.native", "diffusion-pipe": "trainers.diffusion_pipe"}


class RunError(RuntimeError):
    """A run could not be started or found; the message says why and what to do."""


@dataclass(frozen=True)
class RunInfo:
    """What the studio shows about one run, derived from its folder and its pid."""

    run_id: str
    run_dir: Path
    name: str
    backend: str
    created: str
    status: RunStatus
    pid: int | None
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def live(self) -> bool:
        return self.status in ("starting", "running")


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise RunError(f"config file not found: {path}. Pick an existing main TOML.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RunError(f"{path}: not valid TOML ({exc}). Fix the file, then start again.") from exc


def resolve_config_path(base: Path, value: str) -> Path:
    p = user_path(value)
    return p if p.is_absolute() else (base / p).resolve()


def config_folder(meta: dict, fallback: Path) -> Path:
    """The folder a run's relative config paths resolve against (its working directory): the config base
    chosen at start (``paths_check.config_base``), else ``fallback`` (runs started before it was recorded)."""
    base = meta.get("config_base")
    return Path(base) if isinstance(base, str) and base and Path(base).is_dir() else fallback


def _override_toml(path: Path, overrides: dict[str, object]) -> None:
    """Set dotted keys ("adapter.init_from_existing") in a TOML file, keeping its formatting; atomic."""
    doc = toml_io.load(path)
    for dotted, value in overrides.items():
        toml_io.set_value(doc, dotted, value)
    toml_io.save(path, doc)


def _new_run_dir(output_dir: Path, other_roots: list[Path]) -> Path:
    """``<output_dir>/<UTC %Y%m%d_%H-%M-%S>``, as diffusion-pipe names runs, suffixed when the name is
    taken in this or any other known output folder (the name is the run's id in the studio)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H-%M-%S")
    output_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        name = stamp if n == 1 else f"{stamp}_{n}"
        if any((root / name).exists() for root in other_roots):
            continue
        candidate = output_dir / name
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunError(f"could not create a run folder in {output_dir}")


write_json_atomic = atomic_write_json  # the name the backends import


class RunManager:
    """Starts, lists, watches and commands runs. Safe to share between Gradio sessions."""

    def __init__(self, roots: list[Path] | None = None, python: str | None = None,
                 trainer_module: str | None = None):
        """``roots``: output folders to list runs from, plus every folder a run was ever started in
        (remembered in ``<studio home>/roots.json``). ``trainer_module`` replaces every backend's child
        module (tests use a trainer double)."""
        self._roots_file = studio_home() / "roots.json"
        given = [Path(r) for r in (roots or [default_runs_root()])]
        for root in given:
            _checked_root(root)
        self.roots: list[Path] = list(dict.fromkeys(given + self._saved_roots()))
        self.on_new_root: Callable[[Path], None] | None = None  # the UI serves files from new roots
        self.python = python or sys.executable
        self.trainer_module = trainer_module
        self.queue = RunQueue()
        self._lock = threading.Lock()
        self._children: dict[str, subprocess.Popen] = {}
        self._pump_thread: threading.Thread | None = None
        self.hub = EventHub()
        self._adopted_at: dict[Path, float] = {}

    # ---- starting -------------------------------------------------------------------------------
    def start(self, main_config: str | os.PathLike[str], *, name: str | None = None,
              max_steps: int | None = None, backend: str | None = None, queue: bool = True,
              overrides: dict[str, object] | None = None, resume: str | None = None) -> str:
        """Copy the config pair into a new run folder and launch its trainer; returns the run id.

        With ``queue`` (the default) a run started while another one trains waits in the queue for the
        device and starts by itself when the device is free. ``overrides`` ({"adapter.init_from_existing":
        ...}) are written into the run's copy of the main TOML (formatting kept); ``resume`` is a
        diffusion-pipe run folder to continue (that backend resumes into its own folder).
        A config with ``resume_from_checkpoint`` continues that run instead (diffusion-pipe's semantics).
        """
        main_path = user_path(main_config).resolve()
        cfg = _read_toml(main_path)
        if cfg.get("resume_from_checkpoint") and resume is None and not overrides:
            return self._resume_from_config(main_path, cfg)
        backend = backend_of(cfg, backend)  # the argument, else [studio] backend, else auto (by model type)
        if backend not in BACKEND_MODULES:
            raise RunError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_MODULES)}.")
        for key in ("output_dir", "dataset"):
            if not cfg.get(key):
                raise RunError(f"{main_path}: top-level key '{key}' is missing; add it (see diffusion-pipe's examples).")
        base = config_base(main_path, cfg)  # the main file's folder, or the cwd if the paths exist from there
        dataset_path = resolve_config_path(base, cfg["dataset"])
        if not dataset_path.is_file():
            raise RunError(f"{main_path}: dataset = '{cfg['dataset']}' does not exist ({dataset_path}); relative "
                           f"paths resolve against the main file's folder ({main_path.parent}) or, when the "
                           "config's paths exist from there, the current directory.")
        output_dir = resolve_config_path(base, cfg["output_dir"])
        _checked_root(output_dir, f"{main_path}: output_dir")
        with self._lock:
            run_dir = _new_run_dir(output_dir, list(self.roots))
        shutil.copy2(main_path, run_dir / main_path.name)
        if overrides:
            _override_toml(run_dir / main_path.name, overrides)
        notes = scrub_run_copy(run_dir / main_path.name, main_path)  # the W&B key never stays in a run folder
        shutil.copy2(dataset_path, run_dir / dataset_path.name)
        meta = {
            "run_id": run_dir.name, "backend": backend, "name": name or main_path.stem,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "main_config": main_path.name, "dataset_config": dataset_path.name,
            "source_main": str(main_path), "config_base": str(base), "max_steps": max_steps, "pid": None,
            "pid_create_time": None,
        }
        if resume:
            meta["resume"] = resume
        if notes:
            meta["notes"] = notes
            EventWriter(run_dir).emit(LogEvent(level="warning", message=" ".join(notes)))
        self._remember_root(output_dir)
        if queue and (self.queue.items() or self._busy(exclude=run_dir)):
            meta["queued"] = True
            write_json_atomic(run_dir / RUN_FILE, meta)
            self.queue.push(run_dir)
            self.resume_queue()
            return run_dir.name
        write_json_atomic(run_dir / RUN_FILE, meta)
        self._spawn(run_dir, meta, cwd=base)
        return run_dir.name

    # ---- resuming -------------------------------------------------------------------------------
    def resume(self, run_id: str, point: str, *, max_steps: int | None = None) -> str:
        """Continue a run from one of its resume points (trainers/checkpoints.py); returns the run that goes on.

        A native training state continues in the same run folder (a ``resumed`` event marks where); a
        diffusion-pipe state starts a run that resumes diffusion-pipe's own folder; a saved LoRA (weights only)
        starts a new run whose LoRA begins from it (``[adapter] init_from_existing``).
        """
        info = self.info(run_id)
        if info.live or info.status == "queued":
            raise RunError(f"run {run_id} is {info.status}; stop it (or cancel it) before resuming it")
        try:
            found = find_point(info.run_dir, point)
        except KeyError as exc:
            raise RunError(str(exc.args[0])) from None
        source = Path(info.meta.get("source_main") or info.run_dir / info.meta["main_config"])
        if not source.is_file():
            source = info.run_dir / info.meta["main_config"]
        name = f"{info.name} (from {point})"
        if found.kind == "lora":
            return self.start(source, name=name, max_steps=max_steps, backend=info.backend,
                              overrides={"adapter.init_from_existing": str(saves_root(info.run_dir, info.meta) / point)})
        if info.backend != "native":
            return self.start(source, name=name, max_steps=max_steps, backend=info.backend,
                              resume=str(info.run_dir))
        if info.pid:  # its last leg was closed or explained just now (info): nobody may explain it after the resume
            claim(info.run_dir, info.pid)
        meta = dict(info.meta)
        meta.update(resume_from=point, pid=None, pid_create_time=None, queued=False, cancelled=False,
                    resumed=datetime.now(UTC).isoformat(timespec="seconds"))
        if max_steps:
            meta["max_steps"] = max_steps
        EventWriter(info.run_dir).emit(ResumedEvent(step=found.step, epoch=found.epoch, checkpoint=point))
        cwd = config_folder(info.meta, source.parent)
        if self.queue.items() or self._busy(exclude=info.run_dir):
            meta["queued"] = True
            write_json_atomic(info.run_dir / RUN_FILE, meta)
            self.queue.push(info.run_dir)
            self.resume_queue()
            return run_id
        write_json_atomic(info.run_dir / RUN_FILE, meta)
        self._spawn(info.run_dir, meta, cwd=cwd)
        return run_id

    def _resume_from_config(self, main_path: Path, cfg: dict) -> str:
        """``resume_from_checkpoint = true`` (the newest run of output_dir) or ``= '<run folder name>'``."""
        value = cfg["resume_from_checkpoint"]
        run_id, point = self.resume_target(main_path, value if isinstance(value, str) else None)
        return self.resume(run_id, point)

    def resume_target(self, main_config: str | os.PathLike[str], checkpoint: str | None = None) -> tuple[str, str]:
        """(run id, training-state name) that ``dp-studio train MAIN --resume [CHECKPOINT]`` continues.

        ``checkpoint``: None for the newest run of the config's output_dir (the lexicographically last folder,
        as diffusion-pipe picks) and its newest state; a run folder name or path (its newest state); or a
        ``global_stepN`` folder path.
        """
        main_path = user_path(main_config).resolve()
        cfg = _read_toml(main_path)
        output_dir = resolve_config_path(config_base(main_path, cfg), cfg.get("output_dir", "."))
        point = None
        if checkpoint is None:
            candidates = sorted(p.parent for p in output_dir.glob(f"*/{RUN_FILE}"))
            if not candidates:
                raise RunError(f"{output_dir} holds no run to resume; start one first (remove --resume / "
                               "resume_from_checkpoint)")
            run_dir = candidates[-1]
        else:
            path = self._resume_folder(output_dir, checkpoint)
            if (path / "state.json").is_file():
                run_dir, point = path.parent, path.name
            else:
                run_dir = path
            if not (run_dir / RUN_FILE).is_file():
                raise RunError(f"resume {checkpoint!r}: {run_dir} is not a studio run folder (no {RUN_FILE})")
        run_dir = run_dir.resolve()
        self._remember_root(run_dir.parent)
        if point is None:
            states = [p for p in resume_points(run_dir) if p.kind == "state"]
            if not states:
                raise RunError(f"{run_dir} has no training-state checkpoint to resume (set "
                               "checkpoint_every_n_minutes, or stop runs from the studio: a stop writes one)")
            point = states[0].name
        return run_dir.name, point

    def _resume_folder(self, output_dir: Path, checkpoint: str) -> Path:
        """The run (or ``global_stepN``) folder ``checkpoint`` names: a name under the config's output_dir, or a
        path that lies inside it or another known output folder."""
        if "\x00" in checkpoint:
            raise RunError(f"resume {checkpoint!r} refused: it holds a NUL character")
        path = user_path(checkpoint)
        if path.is_absolute() or (not checkpoint.startswith(("./", "../")) and path.exists()):
            if not within_any(path, [output_dir, *self.roots]):
                raise RunError(f"resume {checkpoint!r} refused: it is outside the config's output_dir {output_dir} "
                               "and the studio's other output folders; name a run folder inside output_dir")
            return path.absolute()
        try:
            return resolve_under(output_dir, checkpoint, "resume checkpoint")
        except PathRefused as exc:
            raise RunError(str(exc)) from None

    # ---- the queue ------------------------------------------------------------------------------
    def _busy(self, exclude: Path | None = None) -> bool:
        return any(r.live for r in self.runs() if r.run_dir != exclude)

    def pump(self) -> str | None:
        """Start the first queued run when no run is live; returns its id, or None."""
        if self._busy():
            return None
        run_dir = self.queue.pop_first(lambda p: self._queued_meta(p) is not None)
        if run_dir is None:
            return None
        meta = self._queued_meta(run_dir)
        meta["queued"] = False
        meta["dequeued"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._remember_root(run_dir.parent)
        self._spawn(run_dir, meta, cwd=config_folder(meta, Path(meta["source_main"]).parent))
        return run_dir.name

    @staticmethod
    def _queued_meta(run_dir: Path) -> dict | None:
        try:
            meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if waits_in_queue(meta) else None

    def resume_queue(self) -> None:
        """Make sure queued runs get started (after a server restart too): one background pump thread."""
        with self._lock:
            if self._pump_thread is not None and self._pump_thread.is_alive():
                return
            self._pump_thread = threading.Thread(target=self._pump_loop, daemon=True, name="run-queue")
            self._pump_thread.start()

    def _pump_loop(self) -> None:
        while self.queue.items():
            try:
                self.pump()
            except (OSError, RunError):
                pass  # a broken entry was dropped by pop_first; keep serving the rest
            time.sleep(PUMP_EVERY_S)

    def queued(self) -> list[RunInfo]:
        """Queued runs in the order they will start."""
        return [self._info(p) for p in self.queue.items() if (p / RUN_FILE).is_file()]

    def move(self, run_id: str, position: int) -> None:
        """Reorder: put a queued run at 0-based ``position``."""
        try:
            self.queue.move(self.run_dir(run_id), position)
        except KeyError as exc:
            raise RunError(f"run {run_id} is not queued") from exc

    def cancel(self, run_id: str) -> None:
        """Take a queued run out of the queue; its folder stays, marked cancelled."""
        run_dir = self.run_dir(run_id)
        if not self.queue.remove(run_dir):
            raise RunError(f"run {run_id} is not queued; use Stop for a running one")
        meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        meta.update(queued=False, cancelled=True)
        write_json_atomic(run_dir / RUN_FILE, meta)

    def _saved_roots(self) -> list[Path]:
        """Output folders remembered in roots.json; one that may not be a root (``/``, home...) is ignored."""
        try:
            saved = [Path(p) for p in json.loads(self._roots_file.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError):
            return []
        kept = []
        for root in saved:
            try:
                check_root(root)
            except PathRefused:
                continue
            kept.append(root)
        return kept

    def _remember_root(self, output_dir: Path) -> None:
        with self._lock:
            if output_dir in self.roots:
                return
            self.roots.append(output_dir)
            saved = list(dict.fromkeys([*self._saved_roots(), output_dir]))
        atomic_write_json(self._roots_file, [str(p) for p in saved])
        if self.on_new_root is not None:
            self.on_new_root(output_dir)

    def _spawn(self, run_dir: Path, meta: dict, cwd: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        log = open(run_dir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [self.python, "-m", self.trainer_module or BACKEND_MODULES[meta["backend"]],
                 "--run-dir", str(run_dir), *(["--resume", meta["resume_from"]] if meta.get("resume_from") else [])],
                cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # the web server may die; the run goes on
            )
        except OSError as exc:
            EventWriter(run_dir).emit(FailedEvent(error=f"could not launch the trainer: {exc}"))
            raise RunError(f"could not launch the trainer: {exc}") from exc
        finally:
            log.close()
        meta.update(pid=proc.pid, pid_create_time=create_time(proc.pid))
        write_json_atomic(run_dir / RUN_FILE, meta)
        with self._lock:
            self._children[run_dir.name] = proc
        # Reap the child when it ends so it never lingers as a zombie that looks alive, and explain its end
        # when it did not (kill -9, a crash): this process alone sees the signal or exit code.
        threading.Thread(target=self._reap, args=(run_dir, proc), daemon=True, name=f"reap-{run_dir.name}").start()

    @staticmethod
    def _reap(run_dir: Path, proc: subprocess.Popen) -> None:
        proc.wait()
        explain_death(run_dir, proc.pid, proc.returncode)

    def _explain_if_dead(self, run_dir: Path, meta: dict) -> None:
        """A started run whose process is gone without a closing event gets its ``failed`` event now."""
        pid = meta.get("pid")
        if not pid or meta.get("external"):
            return
        with self._lock:
            proc = self._children.get(run_dir.name)
        returncode = None
        if proc is not None and proc.pid == pid:
            try:
                returncode = proc.wait(timeout=2.0)  # dead already: only the reaper thread's race to wait on
            except subprocess.TimeoutExpired:
                return
        explain_death(run_dir, pid, returncode)

    # ---- finding --------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        """The folder of ``run_id`` under any known root. The id is one plain folder name (safe_paths), and a
        folder that is a symbolic link leading elsewhere is not a run of that root."""
        try:
            run_id = check_name(run_id, "run id")
        except PathRefused as exc:
            raise RunError(str(exc)) from None
        for root in list(self.roots):
            candidate = root / run_id
            if (candidate / RUN_FILE).is_file():
                if candidate.is_symlink() or not is_within(candidate, root):
                    raise RunError(f"run id {run_id!r} refused: {candidate} is a symbolic link; the studio only "
                                   "opens run folders that lie in their output folder")
                return candidate
        raise RunError(f"no run named {run_id!r} under {', '.join(map(str, self.roots))}")

    def info(self, run_id: str) -> RunInfo:
        return self._info(self.run_dir(run_id))

    def _info(self, run_dir: Path) -> RunInfo:
        meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        alive = pid_alive(meta.get("pid"), meta.get("pid_create_time")) or (
            bool(meta.get("external")) and time.time() - float(meta.get("synced_mtime", 0)) < EXTERNAL_LIVE_S)
        status = derive_status(load_all(run_dir), alive, meta)
        if status == "interrupted" and meta.get("pid"):
            self._explain_if_dead(run_dir, meta)
            status = derive_status(load_all(run_dir), alive, meta)
        return RunInfo(run_id=run_dir.name, run_dir=run_dir, name=meta.get("name", run_dir.name),
                       backend=meta.get("backend", "native"), created=meta.get("created", ""),
                       status=status, pid=meta.get("pid"), meta=meta)

    def runs(self) -> list[RunInfo]:
        """Every run under the known roots, newest first."""
        found: list[RunInfo] = []
        for root in list(self.roots):
            if not root.is_dir():
                continue
            self._adopt_external(root)
            for run_file in root.glob(f"*/{RUN_FILE}"):
                if run_file.parent.is_symlink() or not is_within(run_file, root):
                    continue  # a link out of the output folder is not one of its runs (safe_paths)
                try:
                    found.append(self._info(run_file.parent))
                except (OSError, ValueError):
                    continue  # a folder being written right now; it shows up on the next call
        return sorted(found, key=lambda r: (r.created, r.run_id), reverse=True)

    def _adopt_external(self, root: Path) -> None:
        """Give diffusion-pipe runs started outside the studio a run.json + events (at most every 30 s)."""
        now = time.monotonic()
        if now - self._adopted_at.get(root, -ADOPT_EVERY_S) < ADOPT_EVERY_S:
            return
        self._adopted_at[root] = now
        from trainers.diffusion_pipe.discover import adopt_all

        try:
            adopt_all(root)
        except (OSError, ValueError, KeyError):
            pass  # an unreadable foreign folder must not hide the studio's own runs

    # ---- watching and commanding ----------------------------------------------------------------
    def event_batches(self, run_id: str, *, follow: bool = True,
                      heartbeat_s: float | None = None) -> Iterator[list[Event]]:
        """Yield the run's events in batches as they are written, from the first one.

        Ends after a terminal event, or when the process is gone and nothing new was written. All watchers
        of one run share one reader (``EventHub``). With ``heartbeat_s``, an empty batch comes after that
        many seconds of silence, so a reader can refresh clocks or notice it is no longer wanted.
        """
        run_dir = self.run_dir(run_id)
        if not follow:
            events = load_all(run_dir)  # the whole history, resumed legs included
            if events:
                yield events
            return
        yield from self.hub.tail(run_dir, lambda: self._alive(run_dir)).watch(heartbeat_s)

    def events(self, run_id: str, since: int = 0, *, follow: bool = True) -> Iterator[Event]:
        """Yield the run's events from index ``since`` (0 = from the start, as after a page reload)."""
        seen = 0
        for batch in self.event_batches(run_id, follow=follow):
            for ev in batch:  # heartbeats are off here, so batches are never empty
                seen += 1
                if seen > since:
                    yield ev

    def _alive(self, run_dir: Path) -> bool:
        """Whether more events can still come: the process lives, or the run waits in the queue."""
        try:
            meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if waits_in_queue(meta):
            return True
        if pid_alive(meta.get("pid"), meta.get("pid_create_time")):
            return True
        self._explain_if_dead(run_dir, meta)  # its watchers read the explanation before their stream ends
        return False

    def send(self, run_id: str, command: Command | str) -> None:
        """Queue ``command`` for the run's trainer (taken at its next step boundary)."""
        info = self.info(run_id)
        if not info.live:
            raise RunError(f"run {run_id} is {info.status}; commands only reach a running trainer.")
        send_command(info.run_dir, command)

    def kill(self, run_id: str, timeout_s: float = 10.0) -> None:
        """Last resort when a trainer ignores ``stop``: end its process group and record why."""
        info = self.info(run_id)
        if not info.pid or not info.live:
            return
        explain = claim(info.run_dir, info.pid)  # the reaper and the monitors then leave the explanation to us
        try:
            os.killpg(info.pid, 15)
            psutil.Process(info.pid).wait(timeout=timeout_s)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
        except psutil.TimeoutExpired:
            os.killpg(info.pid, 9)
        # The trainer is gone, so this process may write the run's closing event for it.
        if explain and not leg_closed(load_all(info.run_dir)):
            EventWriter(info.run_dir).emit(FailedEvent(error="killed from the studio after it did not stop"))


def _checked_root(path: Path, what: str = "output folder") -> Path:
    """``path`` when it may hold runs (safe_paths.check_root), else RunError naming it."""
    try:
        return check_root(path, what)
    except PathRefused as exc:
        raise RunError(str(exc)) from None
