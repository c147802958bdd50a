"""A snapshot of the machine's resources for the monitor: CPU, RAM, disk, and GPUs when NVML is there."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    mem_used_gb: float
    mem_total_gb: float
    util_pct: float


@dataclass(frozen=True)
class Resources:
    cpu_pct: float
    ram_used_gb: float
    ram_total_gb: float
    disk_free_gb: float | None
    gpus: list[GpuInfo] = field(default_factory=list)
    gpu_note: str = ""


def _gpus() -> tuple[list[GpuInfo], str]:
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"no NVIDIA GPU ({exc})"
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem, util = pynvml.nvmlDeviceGetMemoryInfo(h), pynvml.nvmlDeviceGetUtilizationRates(h)
            name = pynvml.nvmlDeviceGetName(h)
            out.append(GpuInfo(i, name.decode() if isinstance(name, bytes) else name, mem.used / 2**30,
                               mem.total / 2**30, float(util.gpu)))
        return out, ""
    finally:
        pynvml.nvmlShutdown()


def snapshot(disk_path: Path | None = None) -> Resources:
    """Current usage; ``disk_path`` is the folder whose free space matters (the run's output folder)."""
    vm = psutil.virtual_memory()
    free = None
    if disk_path is not None:
        try:
            free = shutil.disk_usage(disk_path).free / 2**30
        except OSError:
            free = None
    gpus, note = _gpus()
    return Resources(psutil.cpu_percent(interval=None), (vm.total - vm.available) / 2**30, vm.total / 2**30,
                     free, gpus, note)
