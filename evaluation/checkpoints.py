"""A checkpoint series (eval_val.py): the checkpoint-<N> folders of a run, which of them are complete (never a
partial one, even while training is still writing it: `checkpoint_problem`) and already evaluated with the same
settings (resumable sweeps), the per-step CSV, and the training log of trainer_state.json."""
from __future__ import annotations

import csv
import gc
import hashlib
import json
import math
import os
from pathlib import Path

from modeling import checkpoint_integrity as integrity

# Settings that must match for a finished checkpoint evaluation to be reused.
REUSE_KEYS = ("split", "protocol", "n_items", "ks", "num_samples", "max_new_tokens", "max_prompt_length",
              "require_year_arg", "data_fingerprint", "catalog_fingerprint")


# --------------------------------------------------------------------------------------------- checkpoints
def checkpoint_series(run_dir: Path, step_interval: int | None = None) -> list[tuple[int, Path]]:
    """`(step, path)` of every checkpoint-<N> folder, by step (`modeling.loading.list_checkpoints`, partial ones
    included: the sweep reports them, `checkpoint_problem`); multiples of step_interval only when given."""
    from modeling.loading import list_checkpoints

    run_dir = Path(run_dir)
    out = [(step, run_dir / f"checkpoint-{step}") for step in list_checkpoints(run_dir, complete_only=False)]
    if step_interval:
        if step_interval < 1:
            raise SystemExit(f"error: --step_interval must be >= 1, got {step_interval}")
        out = [(s, p) for s, p in out if s % step_interval == 0]
    return out


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be evaluated yet (being written, left partial by a killed run, weights not whole, no
    config), or None. The checks of modeling.checkpoint_integrity, the ones resume and resolve_checkpoint use."""
    return integrity.checkpoint_problem(path, for_resume=False)


def data_fingerprint(dataset) -> str:
    h = hashlib.sha1()
    for name in ("sample_id", "prompt", "groundtruth", "seen"):
        h.update(json.dumps(list(dataset[name]), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def finished_metrics(metrics_path: Path, settings: dict) -> tuple[dict | None, str]:
    """The metrics of a finished evaluation with the same settings, else (None, why it cannot be reused)."""
    if not metrics_path.is_file():
        return None, "not evaluated yet"
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return None, f"unreadable {metrics_path} ({err})"
    old = metrics.get("eval_settings") or {}
    diff = [k for k in REUSE_KEYS if old.get(k) != settings.get(k)]
    if diff:
        return None, "settings changed: " + ", ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
    return metrics, "done"


def free_recommender(recommender) -> None:
    """Release a recommender's model before the next checkpoint is loaded (the caller drops its reference too)."""
    close = getattr(recommender, "close", None)
    if callable(close):
        close()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ------------------------------------------------------------------------------------------------------ CSV
def number(value):
    """`value` when it is a number (not a bool), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def csv_row(step: int, metrics: dict, columns: list[str]) -> dict:
    row = {"step": step}
    for c in columns:
        if c != "step":
            row[c] = number(metrics.get(c))
    return row


def merge_csv(csv_path: Path, rows: dict[int, dict], columns: list[str]) -> None:
    """Write `csv_path` = its existing rows (by step) updated with `rows`, sorted by step (atomic)."""
    merged: dict[int, dict] = {}
    all_columns = list(columns)
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for c in reader.fieldnames or []:
                if c not in all_columns:
                    all_columns.append(c)
            for r in reader:
                try:
                    merged[int(float(r["step"]))] = r
                except (KeyError, TypeError, ValueError):
                    continue
    merged.update(rows)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=all_columns, extrasaction="ignore")
        writer.writeheader()
        for step in sorted(merged):
            writer.writerow({c: ("" if merged[step].get(c) is None else merged[step].get(c)) for c in all_columns})
    os.replace(tmp, csv_path)


# ------------------------------------------------------------------------------------------- training log
def latest_trainer_state(run_dir: Path, checkpoints: list[tuple[int, Path]]) -> Path | None:
    """The trainer_state.json with the highest global_step among the run folder and its checkpoints."""
    best, best_step = None, -1
    for path in [Path(run_dir) / "trainer_state.json"] + [p / "trainer_state.json" for _, p in checkpoints]:
        if not path.is_file():
            continue
        try:
            step = int(json.loads(path.read_text(encoding="utf-8")).get("global_step") or 0)
        except (OSError, ValueError, TypeError):
            continue
        if step >= best_step:
            best, best_step = path, step
    return best


def train_log_events(trainer_state: Path | None) -> list[tuple[int, dict]]:
    """`(step, {"train/<key>": value})` from a trainer_state.json log_history (numbers only), by step."""
    if trainer_state is None:
        return []
    history = json.loads(trainer_state.read_text(encoding="utf-8")).get("log_history") or []
    events: dict[int, dict] = {}
    for entry in history:
        step = entry.get("step")
        if not isinstance(step, int):
            continue
        for key, value in entry.items():
            if key in ("step",) or number(value) is None or not math.isfinite(value):
                continue
            events.setdefault(step, {})[f"train/{key}"] = value
    return sorted(events.items())


class TrainLogReplay:
    """Replays a run's training log into a wandb run on the same step axis as the checkpoint evaluations:
    `until(step)` logs the entries before `step` and returns those AT `step` (merged into the eval log call, as
    wandb refuses a second call at the same step); `flush()` logs the rest."""

    def __init__(self, wandb_run, events: list[tuple[int, dict]]):
        self.wandb_run, self.events = wandb_run, list(events)

    def until(self, step: int) -> dict:
        at_step: dict = {}
        while self.events and self.events[0][0] <= step:
            s, values = self.events.pop(0)
            if s == step:
                at_step.update(values)
            else:
                self.wandb_run.log(values, step=s)
        return at_step

    def flush(self) -> None:
        while self.events:
            s, values = self.events.pop(0)
            self.wandb_run.log(values, step=s)
