"""Evaluate one model (or a predictions file, or a baseline) on a split: greedy generation, Recall/NDCG/HR@K.

    # a model folder
    python eval_test.py --model_path results/sft/checkpoint-1500 --dataset_path processed_datasets/reddit_v2
    # completions (or ranked ids) produced elsewhere: JSON Lines {"index": row, "sample_id": id, "completion": text} or
    # {"index": row, "sample_id": id, "item_ids": [catalog ids]}, no model loaded
    python eval_test.py --predictions preds.jsonl --dataset_path processed_datasets/reddit_v2 --output_dir out
    # popularity baseline (most popular training items, seen ones removed)
    python eval_test.py --baseline popularity --dataset_path processed_datasets/reddit_v2
    # a RecPO (R2ec) run: greedy reasoning, then the full catalog ranked with the hidden state at <answer>
    python eval_test.py --recommender recpo --model_path results/recpo/RUN --dataset_path processed_datasets/ml100k
    # Rank-GRPO README form (its grpo_test.py): evaluates <model_root>/checkpoint-<N>
    python eval_test.py --model_name Qwen/Qwen2.5-0.5B-Instruct --model_root results/grpo/RUN \
        --dataset_path processed_datasets/reddit_v2 --catalog_path gt_catalog.pkl --checkpoint 15800

Writes <output_dir>/metrics.json and predictions.jsonl and prints a table. Default output_dir: <model>/eval_<split>
for a model (so <model_root>/checkpoint-N/eval_test), <predictions dir>/<stem>_eval_<split> for a predictions
file, results/baselines/<data set>/<baseline>_eval_<split> for a baseline (`_<protocol>` appended when strict).
Every source is a recommender (evaluation/recommenders.py and each method's own, registered by name in
evaluation/registry.py: --recommender and its flags come from there) scored by the same code; --max_samples N scores a
seeded random subset of N rows (--seed), and predictions keep each row's `index` in the full split.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.args import add_common_script_arguments, require_year_arg, validate_options
from cli.recommenders import discover_recommenders
from cli.run import run_script
from cli.run_logging import tee_output
from evaluation.evaluate import evaluate_recommender, format_metrics
from evaluation.options import add_evaluation_arguments, output_tag
from evaluation.predictions import load_split, normalize_split
from evaluation.recommenders import StaticPredictions
from evaluation.registry import (
    BuildRequest,
    add_recommender_options,
    get_recommender,
    names_help,
    preset_defaults,
    recommender_entries,
)


def build_parser() -> argparse.ArgumentParser:
    discover_recommenders()  # every recommender registers itself; their names and flags come from the registry
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    src = parser.add_argument_group("what to evaluate (exactly one)")
    src.add_argument("--model_path", help="model folder (a checkpoint or a saved model)")
    src.add_argument("--predictions", help="JSON Lines file of {index, sample_id, completion} or {index, sample_id, "
                                           "item_ids}: score without a model (sample_id must be the row's)")
    src.add_argument("--baseline", choices=[e.name for e in recommender_entries("baseline")],
                     help=names_help("baseline") + ". Baselines are written as `Title (Year)` lines and parsed "
                          "back, as a model's answer would be")
    src.add_argument("--model_root", help="run folder: evaluates <model_root>/checkpoint-<checkpoint> "
                                          "(Rank-GRPO's grpo_test.py form)")
    src.add_argument("--checkpoint", default=None, help="checkpoint step under --model_root (an int, or last)")
    src.add_argument("--model_name", default=None, help="base model name (recorded in metrics.json)")
    rec = parser.add_argument_group("how a model recommends (with --model_path / --model_root)")
    rec.add_argument("--recommender", choices=[e.name for e in recommender_entries("model")], default="text",
                     help=names_help("model"))
    add_recommender_options(rec)
    rec.add_argument("--target_only", action="store_true",
                     help="score the next item (`target`) only, as DeepRec and RecPO report; default: `groundtruth`")
    parser.add_argument("--split", default="test", help="split to evaluate (default test; val = validation)")
    parser.add_argument("--output_dir", default=None, help="where metrics.json / predictions.jsonl go")
    add_common_script_arguments(parser)
    add_evaluation_arguments(parser)
    return parser


def resolve_model_path(args) -> str | None:
    if args.model_root is None:
        return args.model_path
    if args.model_path:
        raise SystemExit("error: give --model_path or --model_root [--checkpoint N], not both")
    from modeling.loading import resolve_checkpoint

    return str(resolve_checkpoint(args.model_root, args.checkpoint))


def default_output_dir(args, model_path: str | None, tag: str) -> Path:
    if model_path is not None:
        return Path(model_path) / tag
    if args.predictions:
        p = Path(args.predictions)
        return p.parent / f"{p.stem}_{tag}"
    return Path("results") / "baselines" / Path(args.dataset_path).resolve().name / f"{args.baseline}_{tag}"


def make_recommender(args, model_path: str | None, data, provenance: dict):
    """The recommender the command line names (a model, a predictions file or a baseline); fills provenance."""
    require_year = require_year_arg(args.require_year)
    if args.predictions:
        preds = StaticPredictions.from_file(args.predictions, data.catalog, data.num_rows_in_split,
                                            sample_ids=list(data.full["sample_id"]), rows=data.rows,
                                            require_year=require_year)
        missing = [data.rows[i] for i in preds.missing]
        provenance.update(predictions_file=str(Path(args.predictions).resolve()),
                          num_missing_predictions=len(missing), missing_prediction_indices=missing[:100])
        if missing:
            print(f"[eval_test] WARNING: {len(missing)} of {len(data.dataset)} rows have no prediction in "
                  f"{args.predictions}; they are scored as empty lists (zero)", file=sys.stderr, flush=True)
        return preds
    if model_path is not None:
        entry = get_recommender(args.recommender)
        provenance.update(model_path=str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
                          backend=None, decoding=args.decoding, max_new_tokens=args.max_new_tokens,
                          max_prompt_length=args.max_prompt_length)
        print(f"[eval_test] {args.recommender} recommender from {model_path} on {len(data.dataset)} "
              f"{data.split} rows", flush=True)
    else:
        entry = get_recommender(args.baseline)
        provenance.update(baseline=args.baseline)
    return entry.build(BuildRequest(args, data, model_path, require_year, provenance))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    # defaults a recommender works out from the command line (DeepRec's --episode_config); explicit flags still win
    parser.set_defaults(**preset_defaults(known))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tee_output(args.log_file):
        return run(args)


def check_options(args, model_path: str | None) -> None:
    """Option checks before any data or model is loaded (SystemExit naming the option)."""
    from evaluation.evaluate import check_evaluation_options

    try:
        check_evaluation_options(args.ks, args.n_items, args.max_samples)
    except ValueError as err:  # the messages start with the option's name
        raise SystemExit(f"error: --{err}") from None
    validate_options(args)  # OptionError: the numeric options every script checks the same way (cli.args)
    if model_path is not None and get_recommender(args.recommender).hf_model:  # e.g. a TRM folder is not one
        from modeling.loading import check_model_source

        try:
            check_model_source(model_path, tokenizer=False)
        except FileNotFoundError as err:
            raise SystemExit(f"error: --model_path: {err}") from None


def run(args) -> dict:
    model_path = resolve_model_path(args)
    if len([x for x in (model_path, args.predictions, args.baseline) if x]) != 1:
        raise SystemExit("error: give exactly one of --model_path / --model_root, --predictions, --baseline")
    check_options(args, model_path)
    if args.decoding != "greedy" and (model_path is None or not get_recommender(args.recommender).decodes):
        raise SystemExit(f"error: --decoding {args.decoding} applies to a text model (--model_path/--model_root "
                         "with --recommender text); the other recommenders do not decode item lists")
    if args.decoding == "item_aware":  # its vLLM twin is not built: auto falls back to hf, an explicit vllm stops
        from evaluation.backends import resolve_backend_name

        if args.backend == "vllm":
            raise SystemExit("error: --decoding item_aware runs on the hf backend only (no vLLM logits processor "
                             "yet); pass --backend hf")
        if resolve_backend_name(args.backend) == "vllm":
            print("[eval_test] --decoding item_aware: using the hf backend (the vLLM one has no item-aware "
                  "decoding)", file=sys.stderr)
        args.backend = "hf"
    split = normalize_split(args.split)
    tag = output_tag(split, args.protocol, args.decoding)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args, model_path, tag)
    from preprocess.contract import check_output_dir

    check_output_dir(output_dir)  # before the data, the model or any generation

    data = load_split(args.dataset_path, split, args.catalog_path, args.max_samples, args.seed)
    provenance: dict = {
        "split": split,
        "dataset_path": str(Path(args.dataset_path).resolve()),
        "catalog_path": str(Path(args.catalog_path).resolve()) if args.catalog_path else None,
        "model_name": args.model_name,
        "max_samples": args.max_samples,
        "seed": args.seed,
        "num_rows_in_split": data.num_rows_in_split,
    }
    recommender = make_recommender(args, model_path, data, provenance)
    dataset = data.dataset
    if args.target_only:  # groundtruth = [target]: the next item only
        from evaluation.predictions import target_only

        dataset = target_only(dataset)
        provenance["groundtruth"] = "target"
    metrics = evaluate_recommender(recommender, dataset, data.catalog, output_dir, ks=args.ks,
                                   protocol=args.protocol, n_items=args.n_items, provenance=provenance,
                                   row_indices=data.rows)
    source = model_path or args.predictions or f"baseline {args.baseline}"
    print(format_metrics(metrics, args.ks, title=f"== {source} =="), flush=True)
    print(f"[eval_test] wrote {output_dir / 'metrics.json'} and {output_dir / 'predictions.jsonl'}", flush=True)
    return metrics


if __name__ == "__main__":
    raise SystemExit(run_script(main))
