"""Shared benchmark helpers: timing by repeated runs (median), and the BENCHMARKS.md section writer."""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

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
