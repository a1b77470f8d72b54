"""The trainer's console: one short line per logging step (step, loss, reward, the method's key terms, lr, step
time) instead of transformers' print of the whole metrics dict (~40-60 keys for the RL trainers). The full dict still
goes to ``trainer.state.log_history`` (trainer_state.json), wandb, and -- as a ``[metrics] {json}`` line written to
the log file only -- the ``--log_file`` when stdout is tee'd (``cli.run_logging.tee_output``: a stream with
``write_record``).

    install_compact_console(trainer, terms=[("ndcg", "rewards/ndcg/mean")])
"""
from __future__ import annotations

import json
import math
import sys
import time

from transformers.trainer_callback import PrinterCallback, ProgressCallback

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
    tee'd (`cli.run_logging.tee_output`'s stream has `write_record`; the trainer does not import the scripts' layer)."""
    write_record = getattr(type(sys.stdout), "write_record", None)
    if callable(write_record):
        payload = {"step": step, **{k: v for k, v in logs.items() if k != "total_flos"}}
        sys.stdout.write_record("[metrics] " + json.dumps(payload, default=str))


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
