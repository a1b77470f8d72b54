"""Train DeepRec's traditional recommender (TRM; docs/methods.md §4.2), CleanRL style: one file, top to bottom.

    python train_trm.py --config configs/tiny/trm_ml100k.yaml [--any_field value ...]
    python train_trm.py --dataset_path processed_datasets/ml100k --output_dir results/trm/ml100k

Data: a processed data set (docs/ARCHITECTURE.md): `history` -> `target` rows of the train split are the
next-item samples; `groundtruth` / `seen` of validation and test are what the metrics score.
Model: retrieval/model.py (bidirectional Transformer over the last 20 items, ID embedding + frozen text embedding
through an 8-expert MoE adaptor, user vector = LayerNorm(h_last + MoE(preference)), cosine scores).
Loss and the proxy preference input: retrieval/training.py (full-catalog softmax over cosine / temperature,
history items out of the softmax; with probability --preference_prob the target's own text, or a word-dropped
copy of it, stands in for the LLM's preference text).
Output (--output_dir): model.safetensors + trm_config.json (a `TRMRetriever.load` folder),
metrics_validation.json / metrics_test.json (Recall/NDCG/HR@5/10/20 of the TRM, history only, and of the
popularity baseline on the same rows; `rewards.metrics`, `strict` protocol), train_log.jsonl.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from trl import TrlParser

from cli.args import COMMON_HELP, parse_config
from cli.run import run_script
from cli.run_logging import tee_output
from evaluation.predictions import DEFAULT_SEED, take_subset


# ================================================================================================ 1. arguments
@dataclass
class TRMScriptArguments:
    dataset_path: str | None = field(default=None, metadata={"help": COMMON_HELP["dataset_path"]})
    catalog_path: str | None = field(default=None, metadata={"help": COMMON_HELP["catalog_path"]})
    output_dir: str | None = field(default=None, metadata={"help": "checkpoint + metrics folder "
                                                           "(default results/trm/<data set name>)"})
    text_encoder: str | None = field(default=None, metadata={
        "help": "frozen text encoder (modeling.text_encoder.load_text_encoder; default all-MiniLM-L6-v2 offline)"})
    embedding_cache_dir: str = field(default="results/.cache/text_embeddings", metadata={
        "help": "where encoded item / proxy-preference texts are cached (.npy, keyed by encoder and texts)"})
    # --- model (retrieval.model.TRMConfig)
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    ffn_size: int = 256
    num_experts: int = 8
    max_history: int = 20
    dropout: float = 0.1
    temperature: float = field(default=0.05, metadata={"help": "logits = cosine / temperature"})
    # --- proxy preference (retrieval.training)
    preference_prob: float = field(default=0.5, metadata={"help": "share of samples given a proxy preference"})
    preference_variants: int = field(default=2, metadata={"help": "proxy texts per item, >= 1: the item's full "
                                                          "text, plus N - 1 word-dropped copies (1: full text only)"})
    preference_word_keep: float = field(default=0.5, metadata={"help": "word keep probability of the variants"})
    # --- optimisation
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    num_epochs: float = field(default=1.0, metadata={"help": "passes over the train samples (fractions allowed)"})
    max_steps: int = field(default=300, metadata={"help": "stop after this many steps (-1: from num_epochs); the "
                                                  "default keeps a CPU run to minutes (~1 epoch of ML-100k)"})
    warmup_ratio: float = 0.05
    seed: int = field(default=DEFAULT_SEED, metadata={"help": COMMON_HELP["seed"]})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available) | cpu | cuda"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default); on a shared "
                                                  "machine 1 can be several times faster"})
    # --- data / evaluation
    max_train_samples: int | None = field(default=None, metadata={"help": COMMON_HELP["max_train_samples"]})
    max_eval_samples: int | None = field(default=None, metadata={"help": COMMON_HELP["max_eval_samples"]})
    eval_splits: list[str] = field(default_factory=lambda: ["validation", "test"])
    eval_ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    n_items: int = field(default=20, metadata={"help": "length of the ranked list that is scored"})
    log_every: int = 20
    no_progress: bool = False
    log_file: str | None = field(default=None, metadata={"help": COMMON_HELP["log_file"]})


def parse_args(argv=None) -> TRMScriptArguments:
    parser = TrlParser((TRMScriptArguments,))
    (args,) = parse_config(parser, argv)  # every numeric option range-checked, named
    if not args.dataset_path:
        parser.error("--dataset_path is required (on the command line or in --config)")
    if args.output_dir is None:
        args.output_dir = os.path.join("results", "trm", Path(args.dataset_path).resolve().name)
    from preprocess.contract import check_output_dir

    check_output_dir(args.output_dir)  # before the data, the encoder or training
    return args


# ================================================================================================ 2-6. main
def main(argv=None, encoder=None) -> dict:
    args = parse_args(argv)
    with tee_output(args.log_file):
        return run(args, encoder)


def run(args: TRMScriptArguments, encoder=None) -> dict:
    """Train, save, evaluate. `encoder`: a text encoder object (tests pass a small stand-in); default: the one
    `--text_encoder` names."""
    from tqdm.auto import tqdm

    from evaluation.predictions import normalize_split
    from evaluation.recommenders import PopularityRecommender
    from preprocess.contract import catalog_items_of, load_processed
    from retrieval.retriever import TRMRetriever
    from retrieval.training import PreferenceBank, next_item_loss, next_item_samples, retrieve_split, score_split

    t_start = time.time()
    torch.manual_seed(args.seed)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    out = Path(args.output_dir)

    # --- data + catalog
    splits, catalog = load_processed(args.dataset_path, args.catalog_path)
    if "train" not in splits:
        raise FileNotFoundError(f"{args.dataset_path}: no train split")
    catalog_items = catalog_items_of(catalog)

    # --- frozen text encoder -> item text embeddings (once, cached) -> model
    if encoder is None:
        from modeling.text_encoder import load_text_encoder

        encoder = load_text_encoder(args.text_encoder, device="cuda" if device.type == "cuda" else "cpu")
    out.mkdir(parents=True, exist_ok=True)  # only once the data and the encoder loaded: no empty run folder
    t0 = time.time()
    model_config = dict(hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                        ffn_size=args.ffn_size, num_experts=args.num_experts, max_history=args.max_history,
                        dropout=args.dropout, temperature=args.temperature)
    retriever = TRMRetriever.build(catalog_items, encoder, cache_dir=args.embedding_cache_dir, seed=args.seed,
                                   **model_config)
    bank = PreferenceBank.build(retriever, catalog_items, encoder, args.preference_variants,
                                args.preference_word_keep, seed=args.seed, cache_dir=args.embedding_cache_dir)
    print(f"[trm] {len(catalog_items)} items, text dim {retriever.config.text_dim} "
          f"({time.time() - t0:.1f}s to encode / load item texts)", flush=True)
    retriever.to(device)

    train_ds, _ = take_subset(splits["train"], args.max_train_samples, args.seed)
    samples = next_item_samples(train_ds, retriever, "train")
    print(f"[trm] {len(samples)} train samples (skipped: {samples.skipped})", flush=True)

    # --- optimiser + schedule (linear warm-up, cosine decay)
    steps_per_epoch = math.ceil(len(samples) / args.batch_size)
    total_steps = args.max_steps if args.max_steps > 0 else max(1, round(args.num_epochs * steps_per_epoch))
    warmup = int(args.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(retriever.model.parameters(), lr=args.learning_rate,
                                  weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else
                                                  0.5 * (1 + math.cos(math.pi * (s - warmup) /
                                                                      max(1, total_steps - warmup))))

    # --- train
    generator = torch.Generator().manual_seed(args.seed)
    retriever.model.train()
    losses, log_rows = [], []
    order = torch.randperm(len(samples), generator=generator)
    cursor = 0
    bar = tqdm(range(total_steps), desc="train_trm", disable=args.no_progress)
    for step in bar:
        if cursor >= len(order):  # next epoch: a fresh permutation
            order, cursor = torch.randperm(len(samples), generator=generator), 0
        idx = order[cursor: cursor + args.batch_size]
        cursor += args.batch_size
        targets = samples.target_rows[idx]
        pref, has_pref = bank.sample(targets, args.preference_prob, generator)
        loss = next_item_loss(retriever, samples.history_rows[idx].to(device), targets.to(device),
                              pref.to(device), has_pref.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(retriever.model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == total_steps:
            window = losses[-args.log_every:]
            row = {"step": step + 1, "loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0]}
            log_rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
    retriever.model.eval()
    retriever.refresh()
    train_seconds = time.time() - t_start

    # --- save (a TRMRetriever.load folder)
    retriever.save(out, extra={"train_args": asdict(args), "train_samples": len(samples),
                               "train_steps": total_steps, "train_seconds": round(train_seconds, 1)})
    with open(out / "train_log.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in log_rows)

    # --- evaluate: the TRM (history only) and popularity on the same rows, the project's metrics
    popularity = PopularityRecommender(splits["train"], catalog, n_items=args.n_items)
    results = {"train_losses": losses, "log": log_rows}
    for split in args.eval_splits:
        split = normalize_split(split)
        if split not in splits:
            print(f"[trm] no {split} split: skipped", flush=True)
            continue
        data, rows = take_subset(splits[split], args.max_eval_samples, args.seed)
        t1 = time.time()
        trm_metrics = score_split(retrieve_split(retriever, data, k=args.n_items), data, args.eval_ks,
                                  n_items=args.n_items)
        retrieval_seconds = time.time() - t1
        pop_metrics = score_split([r.item_ids for r in popularity.recommend(data)], data, args.eval_ks,
                                  n_items=args.n_items)
        metrics = {**trm_metrics, "split": split, "recommender": "trm (history only)",
                   "dataset_path": str(Path(args.dataset_path).resolve()), "num_rows_in_split": len(splits[split]),
                   "max_samples": args.max_eval_samples, "seed": args.seed, "checkpoint": str(out.resolve()),
                   "retrieval_seconds": round(retrieval_seconds, 3), "baselines": {"popularity": pop_metrics}}
        (out / f"metrics_{split}.json").write_text(json.dumps(metrics, indent=1))
        results[split] = metrics
        line = " ".join(f"{m}@{k}={trm_metrics[f'{m}@{k}']:.4f}" for k in args.eval_ks for m in ("recall", "ndcg"))
        print(f"[trm] {split} ({int(trm_metrics['num_samples'])} rows) TRM: {line}", flush=True)
        line = " ".join(f"{m}@{k}={pop_metrics[f'{m}@{k}']:.4f}" for k in args.eval_ks for m in ("recall", "ndcg"))
        print(f"[trm] {split} popularity: {line}", flush=True)
    print(f"[trm] saved to {out} ({time.time() - t_start:.0f}s; {total_steps} steps)", flush=True)
    return results


if __name__ == "__main__":
    raise SystemExit(run_script(main))
