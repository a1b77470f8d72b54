"""`--log_file`: tee a training script's stdout/stderr into a file (the released README pipes through `tee`).

Rank 0 writes `log_file`; other ranks of a multi-process launch write `log_file.rank<N>` so lines never interleave.
"""
from __future__ import annotations

import contextlib
import os
import sys


class _Tee:
    """Write to the original stream and to a log file."""

    def __init__(self, stream, fh):
        self.stream, self.fh = stream, fh

    def write(self, data):
        self.stream.write(data)
        self.fh.write(data)
        return len(data)

    def flush(self):
        self.stream.flush()
        self.fh.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_output(log_file: str | None):
    """Inside the block, everything printed also goes to ``log_file`` (appended); a no-op when it is None."""
    if not log_file:
        yield
        return
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    path = log_file if rank == 0 else f"{log_file}.rank{rank}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    saved = sys.stdout, sys.stderr
    with open(path, "a", buffering=1, encoding="utf-8") as fh:
        sys.stdout, sys.stderr = _Tee(sys.stdout, fh), _Tee(sys.stderr, fh)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def configure_wandb(run_dir, project: str | None = None, subdir: str = "wandb") -> None:
    """Set WANDB_PROJECT (when given) and, for offline runs (WANDB_MODE=offline), keep every wandb folder inside
    the run folder (`<run_dir>/<subdir>`), so runs on machines without a home cache or network stay self-contained;
    `wandb sync <run_dir>/<subdir>/wandb/offline-run-*` uploads them later. Existing WANDB_* settings win."""
    if project:
        os.environ["WANDB_PROJECT"] = project
    if os.environ.get("WANDB_MODE", "").lower() not in ("offline", "dryrun"):
        return
    base = os.path.join(os.fspath(run_dir), subdir)
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", ".cache"), ("WANDB_CONFIG_DIR", ".config"),
                     ("WANDB_DATA_DIR", ".data")):
        path = os.path.join(base, sub) if sub else base
        os.makedirs(path, exist_ok=True)
        os.environ.setdefault(var, path)
