"""Paths and commands several bench parts share: the data set, the run's tiny model, the SFT / TRM models the
later parts start from, the text-evaluation arguments and the validation / reward curves."""
from __future__ import annotations

import json
from pathlib import Path

from bench.learning.schedule import KS, PY, Ctx, PartFailed

ML_DATA = "processed_datasets/ml100k"


def tiny_dir(ctx: Ctx) -> Path:
    """The run's own random-init tiny model (BPE trained on ML_DATA), so no other job's models/ folder leaks in."""
    return ctx.root.parent / "data" / "tiny"


def text_eval_args(model: str, data: str = ML_DATA) -> list[str]:
    return ["--model_path", model, "--dataset_path", data, "--max_new_tokens", "160", "--batch_size", "16"]


def trm_dir(ctx: Ctx) -> Path:
    return ctx.root.parent / "trm" / "model"


def sft_dir(ctx: Ctx, seed: int) -> Path:
    return ctx.root.parent / "sft" / f"seed{seed}" / "model"


def sft_start(ctx: Ctx, seed: int) -> Path:
    """The SFT model an RL seed starts from: its own seed's, or seed 0's when SFT ran for fewer seeds."""
    start = sft_dir(ctx, seed if seed in ctx.settings.seeds[:ctx.settings.n_sft_seeds] else ctx.settings.seeds[0])
    if not (start / "config.json").exists():
        raise PartFailed(f"needs the SFT model {start}: run --only sft first")
    return start


def val_curve(ctx: Ctx, run_dir: Path, data: str = ML_DATA) -> list[dict]:
    """eval_val.py over the run's checkpoints; returns the CSV rows (step + metrics)."""
    import csv

    ctx.run([PY, "eval_val.py", "--run_dir", str(run_dir), "--dataset_path", data, "--max_samples",
             str(ctx.settings.n_val), "--max_new_tokens", "160", "--batch_size", "16", "--ks", *map(str, KS),
             "--no_progress"], run_dir.parent / "eval_val.log", done=run_dir / "eval_validation.csv")
    csv_path = run_dir / "eval_validation.csv"
    if not csv_path.exists():
        return []
    with open(csv_path, encoding="utf-8") as fh:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def reward_curve(run_dir: Path) -> list[tuple[float, float]]:
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return []
    history = json.loads(states[-1].read_text()).get("log_history") or []
    return [(h["step"], h["reward"]) for h in history if "reward" in h and "step" in h]
