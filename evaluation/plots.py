"""PNG curves (matplotlib, Agg backend): validation metrics per checkpoint, training loss/reward curves."""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

DEFAULT_CURVE_METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10", "catalog_hit_ratio", "valid_item_ratio")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, max(1, n))
    return math.ceil(n / cols), cols


def plot_series(series: dict[str, tuple[list, list]], png_path, title: str = "", xlabel: str = "step") -> Path:
    """One panel per named series of `(x, y)`; writes `png_path`."""
    plt = _pyplot()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    names = list(series) or ["(no data)"]
    rows, cols = _grid(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        xs, ys = series.get(name, ([], []))
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def read_csv_rows(csv_path) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def plot_curves(csv_path, png_path, metrics: Sequence[str] = DEFAULT_CURVE_METRICS, x: str = "step",
                title: str | None = None) -> Path:
    """Plot the columns `metrics` of a CSV (one row per checkpoint, column `x`) against `x`, one panel each.

    Columns absent from the CSV are skipped; with none present, an empty "(no data)" figure is written.
    """
    rows = read_csv_rows(csv_path)
    series: dict[str, tuple[list, list]] = {}
    for name in metrics:
        points = [(_float(r.get(x)), _float(r.get(name))) for r in rows]
        points = sorted((a, b) for a, b in points if a is not None and b is not None)
        if points:
            series[name] = ([a for a, _ in points], [b for _, b in points])
    return plot_series(series, png_path, title=title if title is not None else Path(csv_path).name, xlabel=x)


def train_series(log_history: list[dict], max_panels: int = 12) -> dict[str, tuple[list, list]]:
    """Loss / reward / KL / learning-rate curves from a `trainer_state.json` `log_history`, by step."""
    wanted = ("loss", "reward", "kl", "entropy", "learning_rate", "clip_ratio", "completion_length",
              "completions/mean_length")
    series: dict[str, tuple[list, list]] = {}
    for entry in log_history:
        step = _float(entry.get("step"))
        if step is None:
            continue
        for key, value in entry.items():
            if key in ("step", "epoch") or not any(w in key for w in wanted):
                continue
            y = _float(value)
            if y is None:
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(step)
            ys.append(y)

    def priority(key: str) -> tuple[int, str]:
        order = ("loss", "eval_loss", "reward", "rewards/", "kl", "learning_rate")
        for i, prefix in enumerate(order):
            if key == prefix or key.startswith(prefix):
                return i, key
        return len(order), key

    return {k: series[k] for k in sorted(series, key=priority)[:max_panels]}


def plot_trainer_state(trainer_state_path, png_path, title: str | None = None) -> Path | None:
    """Training curves from a checkpoint's `trainer_state.json`; None when it logs nothing plottable."""
    with open(trainer_state_path, encoding="utf-8") as fh:
        state = json.load(fh)
    series = train_series(state.get("log_history") or [])
    if not series:
        return None
    return plot_series(series, png_path, title=title if title is not None else "training curves")
