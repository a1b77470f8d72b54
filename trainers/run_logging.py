"""Run logging shared by every training script.

* `tee_output`: `--log_file`, a tee of stdout/stderr into a file (the released README pipes through `tee`). Rank 0
  writes `log_file`; other ranks of a multi-process launch write `log_file.rank<N>` so lines never interleave.
* `install_compact_console`: one short console line per logging step (step, loss, reward, the method's key terms,
  lr, step time) instead of transformers' print of the whole metrics dict (~40-60 keys for the RL trainers). The
  full dict still goes to `trainer.state.log_history` (trainer_state.json), wandb, and -- as a `[metrics] {json}`
  line written to the file only -- the `--log_file`.
* `compose_run_name`: the one run-name format (method, model, lr, beta, extras) of every train_*.py.
* `configure_wandb`: offline wandb folders inside the run folder.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

from transformers.trainer_callback import PrinterCallback, ProgressCallback


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
        from preprocess.common import DataError

        raise DataError(path, reason="--log_file is a folder; name a file")
    from preprocess.common import check_output_dir

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


# ------------------------------------------------------------------------------------ compact console line
# Method terms shown when a logging step has them: (label, metrics key). Rewards per term come from the trainer
# (`rewards/<reward function>/mean`); Rank-GRPO's per-rank rewards (rewards/pos_k) stay out of the console.
CONSOLE_TERMS = (("kl", "kl"), ("ent", "entropy"), ("ndcg", "ndcg"), ("hit", "hit_rate"),
                 ("item_ratio", "item_ratio/mean"), ("rec_loss", "loss/rec"),
                 ("forced", "recpo/forced_answer_rate"), ("table_age", "recpo/item_table_age"),
                 ("valid", "deeprec/valid_format"), ("calls", "deeprec/calls"), ("acc", "mean_token_accuracy"), ("len", "completions/mean_length"))
MAX_CONSOLE_TERMS = 12


def _fmt(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


class CompactLineFormatter:
    """The one-line text of a logs dict. `terms`: (label, key) pairs shown before the built-in CONSOLE_TERMS."""

    def __init__(self, terms=()):
        self.terms = list(terms) + [t for t in CONSOLE_TERMS if t[1] not in {k for _, k in terms}]
        self._last = None  # (time, step) of the previous training log line

    def start(self, step: int) -> None:
        self._last = (time.perf_counter(), step)

    def _step_time(self, logs: dict, step: int) -> float | None:
        now = time.perf_counter()
        measured = None
        if self._last is not None and step > self._last[1]:
            measured = (now - self._last[0]) / (step - self._last[1])
        self._last = (now, step)
        value = logs.get("step_time")
        return value if isinstance(value, (int, float)) else measured

    def line(self, logs: dict, step: int, max_steps: int | None = None) -> str:
        if "train_runtime" in logs:  # the end-of-training summary
            parts = [f"[train] done at step {step}", f"{logs['train_runtime']:.1f}s"]
            if _fmt(logs.get("train_loss")) is not None:
                parts.append(f"train_loss {_fmt(logs['train_loss'])}")
            return " | ".join(parts)
        prefix = "eval_" if any(k.startswith("eval_") for k in logs) and "loss" not in logs else ""
        head = f"[{'eval' if prefix else 'train'}] step {step}" + (f"/{max_steps}" if max_steps else "")
        parts = [head]
        for label, key in (("loss", "loss"), ("reward", "reward")):
            text = _fmt(logs.get(prefix + key))
            if text is not None:
                std = _fmt(logs.get(prefix + key + "_std"))
                parts.append(f"{label} {text}" + (f"±{std}" if std is not None else ""))
        shown = 0
        for label, key in self.terms:
            text = _fmt(logs.get(prefix + key))
            if text is not None and shown < MAX_CONSOLE_TERMS:
                parts.append(f"{label} {text}")
                shown += 1
        if not prefix:
            if _fmt(logs.get("learning_rate")) is not None:
                parts.append(f"lr {logs['learning_rate']:.2e}")
            step_time = self._step_time(logs, step)
            if step_time is not None:
                parts.append(f"{step_time:.2f}s/step")
        elif _fmt(logs.get("eval_runtime")) is not None:
            parts.append(f"{logs['eval_runtime']:.1f}s")
        return " | ".join(parts)


def write_full_metrics(logs: dict, step: int) -> None:
    """The whole logs dict as one `[metrics] {json}` line into the --log_file only (not the console), when stdout is
    tee'd by `tee_output`."""
    out = sys.stdout
    if isinstance(out, _Tee):
        payload = {"step": step, **{k: v for k, v in logs.items() if k != "total_flos"}}
        out.fh.write_record("[metrics] " + json.dumps(payload, default=str))


class CompactProgressCallback(ProgressCallback):
    """transformers' progress bar, with a compact line per log instead of the whole dict."""

    def __init__(self, terms=(), max_str_len: int = 100):
        super().__init__(max_str_len=max_str_len)
        self.formatter = CompactLineFormatter(terms)

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.formatter.start(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(self.formatter.line(logs, state.global_step, state.max_steps))
            write_full_metrics(logs, state.global_step)


class CompactPrinterCallback(PrinterCallback):
    """`--disable_tqdm true`: a compact line per log instead of the whole dict."""

    def __init__(self, terms=()):
        self.formatter = CompactLineFormatter(terms)

    def on_train_begin(self, args, state, control, **kwargs):
        self.formatter.start(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(self.formatter.line(logs, state.global_step, state.max_steps), flush=True)
            write_full_metrics(logs, state.global_step)


def install_compact_console(trainer, terms=()) -> None:
    """Swap the trainer's ProgressCallback / PrinterCallback for the compact versions (the only console printers of
    the metrics dict); `terms` (label, key) are the method's own terms, shown first."""
    for callback in list(trainer.callback_handler.callbacks):
        if type(callback) is ProgressCallback:
            trainer.callback_handler.remove_callback(callback)
            trainer.add_callback(CompactProgressCallback(terms, max_str_len=callback.max_str_len))
        elif type(callback) is PrinterCallback:
            trainer.callback_handler.remove_callback(callback)
            trainer.add_callback(CompactPrinterCallback(terms))
