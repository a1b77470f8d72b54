"""Run logging shared by every training script.

* `tee_output`: `--log_file`, a tee of stdout/stderr into a file (the released README pipes through `tee`). Rank 0
  writes `log_file`; other ranks of a multi-process launch write `log_file.rank<N>` so lines never interleave.
  The tee's `write_record(line)` writes a line to the file only (`trainers.console` puts the full metrics dict
  there).
* `compose_run_name`: the one run-name format (method, model, lr, beta, extras) of every train_*.py.
* `configure_wandb`: offline wandb folders inside the run folder.
* `CurrentStderrHandler`: a logging handler that follows the tee (and test captures) when they swap ``sys.stderr``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys


class _LogFile:
    """The --log_file, shared by the stdout and stderr tees; knows whether the last byte ended a line (progress bars
    on stderr do not), so a record written to the file alone starts on its own line."""

    def __init__(self, fh):
        self.fh, self.at_line_start = fh, True

    def write(self, data):
        if data:
            self.fh.write(data)
            self.at_line_start = data.endswith(("\n", "\r"))
        return len(data)

    def write_record(self, line: str) -> None:
        self.write(("" if self.at_line_start else "\n") + line + "\n")

    def flush(self):
        self.fh.flush()


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

    def write_record(self, line: str) -> None:
        """A line for the log file only (not the console)."""
        self.fh.write_record(line)

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
    if os.path.isdir(path):
        from preprocess.contract import DataError

        raise DataError(path, reason="--log_file is a folder; name a file")
    from preprocess.contract import check_output_dir

    check_output_dir(os.path.dirname(os.path.abspath(path)), option="--log_file's folder")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    saved = sys.stdout, sys.stderr
    with open(path, "a", buffering=1, encoding="utf-8") as fh:
        log = _LogFile(fh)
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
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


# ------------------------------------------------------------------------------------------- run names
def _number_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def compose_run_name(model_name: str, method: str, learning_rate: float, beta: float | None = None,
                     **extras) -> str:
    """`<method>_<model>_lr<lr>[_kl<beta>][_<key><value>...]`, e.g. `rank_grpo_Qwen2.5-0.5B-Instruct_lr1e-06_kl0.001
    _reward-exp_inf`. `model_name` is reduced to its last path part (hub org or folders dropped)."""
    model = str(model_name).rstrip("/").split("/")[-1] or str(model_name)
    name = f"{method}_{model}_lr{_number_text(float(learning_rate))}"
    if beta is not None:
        name += f"_kl{_number_text(float(beta))}"
    for key, value in extras.items():
        if value is not None and value is not False:
            name += f"_{key}" if value is True else f"_{key}-{_number_text(value)}"
    return name


class CurrentStderrHandler(logging.StreamHandler):
    """A StreamHandler that writes to whatever ``sys.stderr`` is at each record, not the stream it was made with:
    ``tee_output`` and test captures swap ``sys.stderr``, and a handler bound to a swapped-out (closed) stream
    prints "--- Logging error ---" with a traceback on every later record."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ / setStream assign it; the property always reads sys.stderr
        pass
