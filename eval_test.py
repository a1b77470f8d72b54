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
Every source is a recommender (evaluation/recommenders.py) scored by the same code; --max_samples N scores a
seeded random subset of N rows (--seed), and predictions keep each row's `index` in the full split.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.evaluate import (
    add_evaluation_arguments,
    backend_options,
    format_metrics,
    load_split,
    normalize_split,
    output_tag,
)
from evaluation.recommenders import (
    GroundtruthRecommender,
    PopularityRecommender,
    StaticPredictions,
    TextRecommender,
    evaluate_recommender,
)
from trainers.cli import run_script
from trainers.run_logging import tee_output
from trainers.script_args import add_common_script_arguments, require_year_arg, validate_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    src = parser.add_argument_group("what to evaluate (exactly one)")
    src.add_argument("--model_path", help="model folder (a checkpoint or a saved model)")
    src.add_argument("--predictions", help="JSON Lines file of {index, sample_id, completion} or {index, sample_id, "
                                           "item_ids}: score without a model (sample_id must be the row's)")
    src.add_argument("--baseline", choices=("popularity", "groundtruth"),
                     help="popularity: the most popular training items; groundtruth: oracle (sanity check). Both "
                          "are written as `Title (Year)` lines and parsed back, as a model's answer would be")
    src.add_argument("--model_root", help="run folder: evaluates <model_root>/checkpoint-<checkpoint> "
                                          "(Rank-GRPO's grpo_test.py form)")
    src.add_argument("--checkpoint", default=None, help="checkpoint step under --model_root (an int, or last)")
    src.add_argument("--model_name", default=None, help="base model name (recorded in metrics.json)")
    rec = parser.add_argument_group("how a model recommends (with --model_path / --model_root)")
    rec.add_argument("--recommender", choices=("text", "recpo", "trm", "deeprec"), default="text",
                     help="text: generate a list and match its lines (SFT, Rank-GRPO, GRPO); recpo: reason, then "
                          "rank the whole catalog with the hidden state at <answer> (train_recpo.py models); trm: "
                          "the traditional recommender alone (--model_path = a train_trm.py folder); deeprec: the "
                          "multi-turn LLM <-> TRM loop, greedy (--model_path = the LLM, --trm_path = the TRM)")
    rec.add_argument("--category", default="items", help="recpo / deeprec: the item category named in prompts")
    rec.add_argument("--no_reasoning", action="store_true", help="recpo: the no-reasoning ablation")
    rec.add_argument("--trm_path", default=None, help="deeprec: the TRM folder (train_trm.py output)")
    rec.add_argument("--prompt_style", choices=("completion", "chat"), default="completion",
                     help="deeprec: the paper's base-model completion prompt, or the model's chat template")
    rec.add_argument("--max_calls", type=int, default=8, help="deeprec: TRM calls per episode (paper: 8)")
    rec.add_argument("--retrieve_k", type=int, default=20, help="deeprec: items per TRM call (paper: 20; use the "
                                                                 "value the model was trained with)")
    rec.add_argument("--max_turn_tokens", type=int, default=None,
                     help="deeprec: new tokens per generation turn (default: the remaining --max_new_tokens)")
    rec.add_argument("--episode_config", default=None,
                     help="deeprec: a train_deeprec.py YAML; its " + ", ".join(EPISODE_KEYS) + " (max_new_tokens "
                          "= its max_trajectory_tokens) become the defaults, so the episodes are those the model "
                          "was trained with (a field it leaves out: train_deeprec.py's default); flags on the "
                          "command line still win")
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
    if model_path is not None:
        from evaluation.backends import make_backend, resolve_backend_name

        backend_name = resolve_backend_name(args.backend)
        provenance.update(model_path=str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
                          backend=backend_name, decoding=args.decoding, max_new_tokens=args.max_new_tokens,
                          max_prompt_length=args.max_prompt_length)
        print(f"[eval_test] {args.recommender} recommender from {model_path} on {len(data.dataset)} "
              f"{data.split} rows", flush=True)
        if args.recommender == "trm":
            from retrieval.recommender import TRMRecommender

            provenance.update(backend=None, decoding=None, recommender="trm")
            return TRMRecommender.from_pretrained(model_path, n_items=args.n_items)
        if args.recommender == "deeprec":
            from methods.deeprec.rollout import DeepRecRecommender, EpisodeSettings
            from modeling.loading import load_model_and_tokenizer
            from retrieval.retriever import TRMRetriever

            if not args.trm_path:
                raise SystemExit("error: --recommender deeprec needs --trm_path (a train_trm.py folder)")
            model, tokenizer = load_model_and_tokenizer(model_path)
            model.eval()
            provenance.update(backend="transformers", recommender="deeprec", trm_path=args.trm_path,
                              prompt_style=args.prompt_style, max_calls=args.max_calls, retrieve_k=args.retrieve_k,
                              max_turn_tokens=args.max_turn_tokens)
            settings = EpisodeSettings(max_calls=args.max_calls, max_tokens=args.max_new_tokens,
                                       max_turn_tokens=args.max_turn_tokens, k=args.retrieve_k)
            return DeepRecRecommender(model, tokenizer, TRMRetriever.load(args.trm_path, encoder="auto"),
                                      data.catalog, settings, prompt_style=args.prompt_style, category=args.category,
                                      batch_size=args.batch_size)
        if args.recommender == "recpo":
            from methods.recpo.recommender import RecPORecommender

            provenance.update(backend="transformers", recommender="recpo", category=args.category,
                              reasoning=not args.no_reasoning)
            return RecPORecommender.from_pretrained(model_path, data.catalog, category=args.category,
                                                    n_items=args.n_items, max_new_tokens=args.max_new_tokens,
                                                    reasoning=not args.no_reasoning)
        backend = make_backend(backend_name, model_path, **backend_options(args))
        return TextRecommender(backend, data.catalog, require_year, decoding=args.decoding)
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
    provenance.update(baseline=args.baseline)
    if args.baseline == "popularity":
        if "train" not in data.splits:
            raise SystemExit(f"error: --baseline popularity needs a train split in {args.dataset_path}")
        return PopularityRecommender(data.splits["train"], data.catalog, args.n_items, as_text=True,
                                     require_year=require_year)
    return GroundtruthRecommender(data.catalog, args.n_items, as_text=True, require_year=require_year)


# eval_test.py option <- train_deeprec.py config field: the episode a DeepRec model was trained on
EPISODE_KEYS = {"prompt_style": "prompt_style", "category": "category", "max_calls": "max_calls",
                "retrieve_k": "retrieve_k", "max_turn_tokens": "max_turn_tokens",
                "max_new_tokens": "max_trajectory_tokens"}


def episode_defaults(path: str) -> dict:
    """The EPISODE_KEYS of a train_deeprec.py YAML; a field the file leaves out is DeepRecConfig's default, the
    value train_deeprec.py trained with (SystemExit naming the file when it cannot be read)."""
    import dataclasses

    import yaml

    from methods.deeprec.trainer import DeepRecConfig

    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except OSError as err:
        raise SystemExit(f"error: --episode_config {path}: {err.strerror}")
    if not isinstance(config, dict):
        raise SystemExit(f"error: --episode_config {path}: expected a YAML mapping of train_deeprec.py options")
    defaults = {f.name: f.default for f in dataclasses.fields(DeepRecConfig)}
    missing = [field for field in EPISODE_KEYS.values() if field not in config]
    if missing:
        print(f"[eval_test] --episode_config {path}: {', '.join(f'{k}={defaults[k]!r}' for k in missing)} "
              "(train_deeprec.py's defaults: not in the file)")
    return {option: config.get(field, defaults[field]) for option, field in EPISODE_KEYS.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.episode_config:  # the YAML's episode settings become defaults; explicit flags still override them
        parser.set_defaults(**episode_defaults(known.episode_config))
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
    if args.max_calls < 1:
        raise SystemExit(f"error: --max_calls must be >= 1, got {args.max_calls}")
    validate_options(args)  # OptionError: the numeric options every script checks the same way (trainers.script_args)
    if model_path is not None and args.recommender != "trm":  # a TRM folder is not a transformers model
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
    if args.decoding != "greedy" and (model_path is None or args.recommender != "text"):
        raise SystemExit(f"error: --decoding {args.decoding} applies to a text model (--model_path/--model_root "
                         "with --recommender text); the other recommenders do not decode item lists")
    split = normalize_split(args.split)
    tag = output_tag(split, args.protocol, args.decoding)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args, model_path, tag)
    from preprocess.common import check_output_dir

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
        from methods.deeprec.rollout import target_only

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
