"""Shared benchmark helpers: timing by repeated runs (median), a per-step clock for trainers, the machine line."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS_DIR = REPO / "bench" / "out"


def median_seconds(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    return (f"{platform.machine()}, {torch.get_num_threads()} torch threads, python {platform.python_version()}, "
            f"torch {torch.__version__}")


class StepClock(TrainerCallback):
    """A trainer callback timing each optimizer step: its process CPU and wall seconds (``cpu``, ``wall``) and the
    phases timed inside it (``steps``: one dict per step, name -> (cpu s, wall s), filled by ``timed`` / ``add``,
    with "step" the whole step)."""

    def __init__(self):
        self.steps: list[dict] = []
        self.current: dict = {}

    @property
    def cpu(self) -> list[float]:
        return [s["step"][0] for s in self.steps]

    @property
    def wall(self) -> list[float]:
        return [s["step"][1] for s in self.steps]

    def add(self, name: str, cpu: float, wall: float) -> None:
        c, w = self.current.get(name, (0.0, 0.0))
        self.current[name] = (c + cpu, w + wall)

    def timed(self, name: str, fn, *a, **kw):
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            self.add(name, time.process_time() - c0, time.perf_counter() - w0)

    def on_step_begin(self, args, state, control, **kw):
        self.current = {}
        self._c, self._w = time.process_time(), time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.add("step", time.process_time() - self._c, time.perf_counter() - self._w)
        self.steps.append(self.current)


def cores_and_load(result: dict) -> str:
    """'2 cores, load average 0.1 -> 1.0' (run_all's 1-min load before / after the benchmark), for a section's
    header line; an older result without load_avg gives the cores only."""
    load = result.get("load_avg")
    return f"{os.cpu_count()} cores" + (f", load average {load[0]:.1f} -> {load[1]:.1f}" if load else "")
