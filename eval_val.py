"""Evaluate every checkpoint of a training run on the validation split: metric curves over training steps.

    python eval_val.py --run_dir results/sft/RUN --dataset_path processed_datasets/reddit_v2 --max_samples 500
    # Rank-GRPO README forms (its eval_sft.py / eval_grpo_val.py): --model_root is the run folder,
    # --upload_wandb = --report_to wandb
    python eval_val.py --model_name Qwen/Qwen2.5-0.5B-Instruct --model_root results/grpo/RUN \
        --dataset_path processed_datasets/reddit_v2 --catalog_path gt_catalog.pkl \
        --wandb_project grpo_eval_val --upload_wandb --step_interval 200

For each <run_dir>/checkpoint-<N> in step order (only N divisible by --step_interval when given):
  * skips it when <run_dir>/checkpoint-N/eval_<split>/metrics.json exists with the same settings (resumable:
    rerun the command while training goes on), else generates greedily and scores (eval_test.py's outputs);
  * merges a row (step + metrics) into <run_dir>/eval_<split>.csv (rows of checkpoints deleted since, e.g. by
    save_total_limit, are kept) and redraws <run_dir>/eval_<split>.png;
  * with --report_to wandb, logs the metrics at step=N (plus the training curves of trainer_state.json, same
    step axis). With WANDB_MODE=offline, wandb's dirs default to <run_dir>/wandb_eval (sync later with
    `wandb sync`).
Also draws the latest trainer_state.json's loss / reward curves into <run_dir>/train_curves.png.
`_<protocol>` is appended to the eval_<split> names for --protocol strict.
"""
from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

from evaluation.evaluate import (
    add_common_arguments,
    backend_options,
    evaluate,
    format_metrics,
    load_split,
    metric_keys,
    normalize_split,
    output_tag,
    require_year_arg,
)
from evaluation.plots import plot_curves, plot_trainer_state
from trainers.run_logging import configure_wandb

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Settings that must match for a finished checkpoint evaluation to be reused.
REUSE_KEYS = ("split", "protocol", "n_items", "ks", "num_samples", "max_new_tokens", "max_prompt_length",
              "require_year_arg", "data_fingerprint", "catalog_fingerprint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    run = parser.add_argument_group("run")
    run.add_argument("--run_dir", "--model_root", dest="run_dir", required=True,
                     help="training output folder holding checkpoint-<N>/ (--model_root: Rank-GRPO's name)")
    run.add_argument("--model_name", default=None, help="base model name (recorded; wandb run name)")
    run.add_argument("--split", default="validation", help="split to evaluate (default validation)")
    run.add_argument("--step_interval", type=int, default=None,
                     help="evaluate only checkpoints whose step is a multiple of this")
    run.add_argument("--overwrite", action="store_true", help="re-evaluate checkpoints that already have results")
    log = parser.add_argument_group("logging")
    log.add_argument("--report_to", choices=("none", "wandb"), default="none")
    log.add_argument("--upload_wandb", action="store_true", help="same as --report_to wandb (Rank-GRPO's flag)")
    log.add_argument("--wandb_project", default=None)
    log.add_argument("--wandb_entity", default=None)
    log.add_argument("--wandb_run_name", default=None, help="default: <run_dir name>-eval_<split>")
    add_common_arguments(parser)
    return parser


# --------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(run_dir: Path, step_interval: int | None = None) -> list[tuple[int, Path]]:
    """`(step, path)` of every checkpoint-<N> folder, by step; multiples of step_interval only when given."""
    out = []
    for child in run_dir.iterdir() if run_dir.is_dir() else []:
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir():
            out.append((int(m.group(1)), child))
    out.sort()
    if step_interval:
        if step_interval < 1:
            raise SystemExit(f"error: --step_interval must be >= 1, got {step_interval}")
        out = [(s, p) for s, p in out if s % step_interval == 0]
    return out


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


def checkpoint_complete(path: Path) -> bool:
    """A loadable model folder: a config (model or adapter) and a weights file."""
    has_config = (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
    return has_config and any((path / name).is_file() for name in WEIGHT_FILES)


def _settings(args, split: str, dataset, catalog) -> dict:
    """What a finished evaluation must share to be reused (paths may move: data and catalog by content)."""
    return {
        "split": split, "protocol": args.protocol, "n_items": args.n_items, "ks": list(args.ks),
        "num_samples": len(dataset), "max_new_tokens": args.max_new_tokens,
        "max_prompt_length": args.max_prompt_length, "require_year_arg": args.require_year,
        "data_fingerprint": data_fingerprint(dataset), "catalog_fingerprint": catalog_fingerprint(catalog),
        "dataset_path": str(Path(args.dataset_path).resolve()),
        "catalog_path": str(Path(args.catalog_path).resolve()) if args.catalog_path else None,
    }


def data_fingerprint(dataset) -> str:
    h = hashlib.sha1()
    for name in ("sample_id", "prompt", "groundtruth", "seen"):
        h.update(json.dumps(list(dataset[name]), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def catalog_fingerprint(catalog) -> str:
    rows = sorted((it["id"], it["title"], it.get("year")) for it in catalog)
    return hashlib.sha1(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


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


# ------------------------------------------------------------------------------------------------------ CSV
def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def csv_row(step: int, metrics: dict, columns: list[str]) -> dict:
    row = {"step": step}
    for c in columns:
        if c != "step":
            row[c] = _number(metrics.get(c))
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


# ---------------------------------------------------------------------------------------------------- wandb
def init_wandb(args, run_dir: Path, tag: str, settings: dict):
    configure_wandb(run_dir, subdir="wandb_eval")  # offline: wandb folders stay inside the run folder
    import wandb

    return wandb.init(
        project=args.wandb_project or "eval_val", entity=args.wandb_entity,
        name=args.wandb_run_name or f"{run_dir.resolve().name}-{tag}", job_type="eval",
        dir=os.environ.get("WANDB_DIR"), config={"run_dir": str(run_dir.resolve()), "model_name": args.model_name,
                                                 **settings},
    )


def latest_trainer_state(run_dir: Path, checkpoints: list[tuple[int, Path]]) -> Path | None:
    """The trainer_state.json with the highest global_step among the run folder and its checkpoints."""
    best, best_step = None, -1
    for path in [run_dir / "trainer_state.json"] + [p / "trainer_state.json" for _, p in checkpoints]:
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
            if key in ("step",) or _number(value) is None or not math.isfinite(value):
                continue
            events.setdefault(step, {})[f"train/{key}"] = value
    return sorted(events.items())


# ----------------------------------------------------------------------------------------------------- main
def _free(backend) -> None:
    """Release a backend's model before the next checkpoint is loaded (the caller drops its reference too)."""
    close = getattr(backend, "close", None)
    if callable(close):
        close()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> dict[int, dict]:
    args = build_parser().parse_args(argv)
    report_to = "wandb" if args.upload_wandb else args.report_to
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise SystemExit(f"error: run folder not found: {run_dir}")
    split = normalize_split(args.split)
    tag = output_tag(split, args.protocol)
    checkpoints = list_checkpoints(run_dir, args.step_interval)
    if not checkpoints:
        print(f"[eval_val] no checkpoint-<N> folders under {run_dir}"
              + (f" with step % {args.step_interval} == 0" if args.step_interval else ""), flush=True)

    dataset, catalog, n_full, _ = load_split(args.dataset_path, split, args.catalog_path, args.max_samples)
    settings = _settings(args, split, dataset, catalog)
    columns = ["step"] + metric_keys(args.ks) + ["num_parsed", "num_samples"]
    csv_path, png_path = run_dir / f"{tag}.csv", run_dir / f"{tag}.png"

    trainer_state = latest_trainer_state(run_dir, checkpoints)
    train_events = train_log_events(trainer_state) if report_to == "wandb" else []
    wandb_run = init_wandb(args, run_dir, tag, settings) if report_to == "wandb" else None

    def log_train_until(step: int, inclusive: bool) -> dict:
        """Log training entries before `step`; return those at `step` (merged into the eval log call)."""
        at_step: dict = {}
        while train_events and (train_events[0][0] < step or (inclusive and train_events[0][0] == step)):
            s, values = train_events.pop(0)
            if s == step:
                at_step.update(values)
            else:
                wandb_run.log(values, step=s)
        return at_step

    results: dict[int, dict] = {}
    from evaluation.backends import make_backend, resolve_backend_name

    backend_name = resolve_backend_name(args.backend) if checkpoints else args.backend
    for step, ckpt in checkpoints:
        out_dir = ckpt / tag
        if not checkpoint_complete(ckpt):
            print(f"[eval_val] step {step}: {ckpt} has no config.json or weights yet (being written?), skipped; "
                  "rerun later", flush=True)
            continue
        metrics, why = (None, "--overwrite") if args.overwrite else finished_metrics(out_dir / "metrics.json", settings)
        if metrics is not None:
            print(f"[eval_val] step {step}: done already ({out_dir / 'metrics.json'}), skipped", flush=True)
        else:
            print(f"[eval_val] step {step}: evaluating {ckpt} ({why})", flush=True)
            t0 = time.time()
            backend = make_backend(backend_name, str(ckpt), **backend_options(args))
            metrics = evaluate(
                dataset, catalog, out_dir, backend=backend, ks=args.ks, protocol=args.protocol,
                n_items=args.n_items, require_year=require_year_arg(args.require_year),
                provenance={
                    "split": split, "step": step, "model_path": str(ckpt.resolve()), "model_name": args.model_name,
                    "backend": backend_name, "decoding": "greedy", "max_new_tokens": args.max_new_tokens,
                    "max_prompt_length": args.max_prompt_length, "dataset_path": settings["dataset_path"],
                    "catalog_path": settings["catalog_path"], "max_samples": args.max_samples,
                    "num_rows_in_split": n_full, "eval_settings": settings,
                },
            )
            _free(backend)
            backend = None
            print(format_metrics(metrics, args.ks, title=f"== step {step} ({time.time() - t0:.1f}s) =="), flush=True)
        results[step] = metrics
        merge_csv(csv_path, {step: csv_row(step, metrics, columns)}, columns)
        plot_curves(csv_path, png_path, title=f"{run_dir.resolve().name} {tag}")
        if wandb_run is not None:
            values = log_train_until(step, inclusive=True)
            values.update({f"{split}/{k}": metrics[k] for k in columns[1:] if _number(metrics.get(k)) is not None})
            wandb_run.log(values, step=step)

    if trainer_state is not None:
        train_png = plot_trainer_state(trainer_state, run_dir / "train_curves.png",
                                       title=f"{run_dir.resolve().name} (from {trainer_state.parent.name})")
        if train_png:
            print(f"[eval_val] wrote {train_png}", flush=True)
    if wandb_run is not None:
        if train_events:
            log_train_until(train_events[-1][0] + 1, inclusive=False)
        images = {}
        import wandb

        for key, path in ((f"{split}/curves", png_path), ("train/curves", run_dir / "train_curves.png")):
            if path.is_file():
                images[key] = wandb.Image(str(path))
        if images:
            wandb_run.log(images)
        wandb_run.finish()
    if checkpoints:
        print(f"[eval_val] wrote {csv_path} and {png_path}", flush=True)
    return results


if __name__ == "__main__":
    main()
