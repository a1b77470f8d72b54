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
