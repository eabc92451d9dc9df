"""What every benchmark records about the machine it ran on (imported by the scripts beside it;
the leading underscore keeps ``run_all`` from running it as a benchmark)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> str:
    """CPU model from /proc/cpuinfo plus the number of logical cores."""
    model = platform.processor() or platform.machine()
    cores = os.cpu_count() or 0
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    models = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    if models:
        model = models[0]
        cores = sum(1 for ln in lines if ln.startswith("processor"))
    return f"{model} ({cores} cores)"


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (other work on the machine skews timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def device_description(device: str) -> str:
    """The torch device a benchmark trained/ran on: the GPU's name, or the CPU and its threads."""
    import torch  # here, not at the top: benchmarks without torch import this module too

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} + {cpu_description()}"
    return f"CPU: {cpu_description()}, torch threads {torch.get_num_threads()}"
