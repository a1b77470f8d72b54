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
  * skips a checkpoint that is not complete (still being written, or left partial by a killed run: no
    checkpoint_complete.json, or weights shorter than their header) and one whose files fail to load (a sha256
    that differs from checkpoint_complete.json's, a SafetensorError, weights that do not fit its config.json's
    model): each is reported and the series goes on (rerun later to pick them up); when none could be evaluated
    because they fail to load, the script exits with status 2;
  * merges a row (step + metrics) into <run_dir>/eval_<split>.csv (rows of checkpoints deleted since, e.g. by
    save_total_limit, are kept) and redraws <run_dir>/eval_<split>.png;
  * with --report_to wandb, logs the metrics at step=N (plus the training curves of trainer_state.json, same
    step axis). With WANDB_MODE=offline, wandb's dirs default to <run_dir>/wandb_eval (sync later with
    `wandb sync`).
Also draws the latest trainer_state.json's loss / reward curves into <run_dir>/train_curves.png.
`_<protocol>` is appended to the eval_<split> names for --protocol strict. --max_samples N evaluates a seeded
random subset of N rows (--seed), the same rows for every checkpoint.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from safetensors import SafetensorError

from cli.args import OptionError, add_common_script_arguments, require_year_arg, validate_options
from cli.run import run_script
from cli.run_logging import configure_wandb, tee_output
from evaluation.checkpoints import (
    TrainLogReplay,
    checkpoint_problem,
    checkpoint_series,
    csv_row,
    data_fingerprint,
    finished_metrics,
    free_recommender,
    latest_trainer_state,
    merge_csv,
    number,
    train_log_events,
)
from evaluation.evaluate import evaluate_recommender, format_metrics, metric_keys
from evaluation.options import add_evaluation_arguments, output_tag
from evaluation.plots import plot_curves, plot_trainer_state
from evaluation.predictions import load_split, normalize_split
from evaluation.recommenders import TextRecommender
from preprocess.contract import catalog_fingerprint


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
    add_common_script_arguments(parser)
    add_evaluation_arguments(parser)
    return parser


def eval_settings(args, split: str, dataset, catalog) -> dict:
    """What a finished evaluation must share to be reused (paths may move: data and catalog by content)."""
    return {
        "split": split, "protocol": args.protocol, "n_items": args.n_items, "ks": list(args.ks),
        "num_samples": len(dataset), "max_new_tokens": args.max_new_tokens,
        "max_prompt_length": args.max_prompt_length, "require_year_arg": args.require_year,
        "data_fingerprint": data_fingerprint(dataset), "catalog_fingerprint": catalog_fingerprint(catalog),
        "dataset_path": str(Path(args.dataset_path).resolve()),
        "catalog_path": str(Path(args.catalog_path).resolve()) if args.catalog_path else None,
    }


def init_wandb(args, run_dir: Path, tag: str, settings: dict):
    configure_wandb(run_dir, subdir="wandb_eval")  # offline: wandb folders stay inside the run folder
    import wandb

    return wandb.init(
        project=args.wandb_project or "eval_val", entity=args.wandb_entity,
        name=args.wandb_run_name or f"{run_dir.resolve().name}-{tag}", job_type="eval",
        dir=os.environ.get("WANDB_DIR"), config={"run_dir": str(run_dir.resolve()), "model_name": args.model_name,
                                                 **settings},
    )


class CheckpointLoadError(RuntimeError):
    """A checkpoint whose files do not load (e.g. a SafetensorError): reported, and the series goes on."""


def evaluate_checkpoint(args, step: int, ckpt: Path, data, settings: dict, backend_name: str, out_dir: Path):
    """Greedy generation from one checkpoint, scored and written to <checkpoint>/eval_<split>/."""
    from evaluation.backends import backend_options, make_backend

    t0 = time.time()
    try:
        backend = make_backend(backend_name, str(ckpt), **backend_options(args))
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # corrupt / half-copied files
        raise CheckpointLoadError(f"{type(err).__name__}: {err}") from err
    recommender = TextRecommender(backend, data.catalog, require_year_arg(args.require_year), decoding=args.decoding)
    metrics = evaluate_recommender(
        recommender, data.dataset, data.catalog, out_dir, ks=args.ks, protocol=args.protocol,
        n_items=args.n_items, row_indices=data.rows,
        provenance={
            "split": data.split, "step": step, "model_path": str(ckpt.resolve()), "model_name": args.model_name,
            "backend": backend_name, "decoding": args.decoding, "max_new_tokens": args.max_new_tokens,
            "max_prompt_length": args.max_prompt_length, "dataset_path": settings["dataset_path"],
            "catalog_path": settings["catalog_path"], "max_samples": args.max_samples, "seed": args.seed,
            "num_rows_in_split": data.num_rows_in_split, "eval_settings": settings,
        },
    )
    free_recommender(recommender)
    print(format_metrics(metrics, args.ks, title=f"== step {step} ({time.time() - t0:.1f}s) =="), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> dict[int, dict]:
    args = build_parser().parse_args(argv)
    with tee_output(args.log_file):
        return run(args)


def run(args) -> dict[int, dict]:
    report_to = "wandb" if args.upload_wandb else args.report_to
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise SystemExit(f"error: run folder not found: {run_dir}")
    validate_options(args)  # OptionError naming the option (cli.args)
    from evaluation.evaluate import check_evaluation_options
    from preprocess.contract import check_output_dir

    try:
        check_evaluation_options(args.ks, args.n_items, args.max_samples)
    except ValueError as err:  # the messages start with the option's name
        raise OptionError(f"--{err}") from None
    check_output_dir(run_dir, option="--run_dir")  # eval_<split>.csv/png and checkpoint-N/eval_<split>/ go there
    split = normalize_split(args.split)
    tag = output_tag(split, args.protocol, args.decoding)
    checkpoints = checkpoint_series(run_dir, args.step_interval)
    if not checkpoints:
        print(f"[eval_val] no checkpoint-<N> folders under {run_dir}"
              + (f" with step % {args.step_interval} == 0" if args.step_interval else ""), flush=True)

    data = load_split(args.dataset_path, split, args.catalog_path, args.max_samples, args.seed)
    settings = eval_settings(args, split, data.dataset, data.catalog)
    columns = ["step"] + metric_keys(args.ks) + ["num_parsed", "num_samples"]
    csv_path, png_path = run_dir / f"{tag}.csv", run_dir / f"{tag}.png"

    trainer_state = latest_trainer_state(run_dir, checkpoints)
    wandb_run = init_wandb(args, run_dir, tag, settings) if report_to == "wandb" else None
    train_log = TrainLogReplay(wandb_run, train_log_events(trainer_state)) if wandb_run is not None else None

    results: dict[int, dict] = {}
    skipped: dict[int, str] = {}  # step -> why (partial, or its files fail to load)
    unloadable: dict[int, str] = {}  # step -> why its files fail to load (corrupt, or weights that do not fit)
    from evaluation.backends import resolve_backend_name

    backend_name = resolve_backend_name(args.backend) if checkpoints else args.backend
    for step, ckpt in checkpoints:
        out_dir = ckpt / tag
        problem = checkpoint_problem(ckpt)
        if problem:
            print(f"[eval_val] step {step}: {ckpt} is not complete ({problem}), skipped; rerun later", flush=True)
            skipped[step] = problem
            continue
        metrics, why = (None, "--overwrite") if args.overwrite else finished_metrics(out_dir / "metrics.json", settings)
        if metrics is not None:
            print(f"[eval_val] step {step}: done already ({out_dir / 'metrics.json'}), skipped", flush=True)
        else:
            print(f"[eval_val] step {step}: evaluating {ckpt} ({why})", flush=True)
            try:
                metrics = evaluate_checkpoint(args, step, ckpt, data, settings, backend_name, out_dir)
            except CheckpointLoadError as err:
                print(f"[eval_val] step {step}: cannot load {ckpt} ({err}), skipped; the other checkpoints go on",
                      flush=True)
                skipped[step] = unloadable[step] = str(err)
                continue
        results[step] = metrics
        merge_csv(csv_path, {step: csv_row(step, metrics, columns)}, columns)
        plot_curves(csv_path, png_path, title=f"{run_dir.resolve().name} {tag}")
        if wandb_run is not None:
            values = train_log.until(step)
            values.update({f"{split}/{k}": metrics[k] for k in columns[1:] if number(metrics.get(k)) is not None})
            wandb_run.log(values, step=step)

    if trainer_state is not None:
        train_png = plot_trainer_state(trainer_state, run_dir / "train_curves.png",
                                       title=f"{run_dir.resolve().name} (from {trainer_state.parent.name})")
        if train_png:
            print(f"[eval_val] wrote {train_png}", flush=True)
    if wandb_run is not None:
        train_log.flush()
        import wandb

        images = {key: wandb.Image(str(path)) for key, path in
                  ((f"{split}/curves", png_path), ("train/curves", run_dir / "train_curves.png")) if path.is_file()}
        if images:
            wandb_run.log(images)
        wandb_run.finish()
    if checkpoints and results:
        print(f"[eval_val] wrote {csv_path} and {png_path}", flush=True)
    if skipped:
        print(f"[eval_val] {len(skipped)} checkpoint(s) skipped: "
              + "; ".join(f"step {s}: {why}" for s, why in sorted(skipped.items())), flush=True)
    if unloadable and not results:  # nothing evaluated and something refused: not a success
        from modeling.checkpoint_integrity import CheckpointError

        step, why = sorted(unloadable.items())[0]
        raise CheckpointError(run_dir, f"no checkpoint could be evaluated; {len(unloadable)} failed to load "
                                       f"(step {step}: {why})")
    return results


if __name__ == "__main__":
    raise SystemExit(run_script(main))
