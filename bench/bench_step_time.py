"""Training-step time: RankGRPOTrainer (algorithm rank_grpo) / stock trl.GRPOTrainer, same everything else.

Same tiny random-init Qwen3-style model (BPE tokenizer trained on the data), same ML-100k prompts, batch, G, seed
and completion length (generation is forced to the full `max_completion_length` with `min_new_tokens`, so both
trainers generate and back-propagate identical shapes). The stock trainer gets a reward function that parses and
judges completions with the same matcher and returns the sequence NDCG, so the difference measured is the
Rank-GRPO machinery: per-rank rewards and advantages, the token -> item map and the item-level ratio/loss.
Time per step is the median over optimizer steps after a warm-up step; the two trainers run alternately
(stock, rank, stock, rank, ...) and each keeps its best median, so a busy neighbour on the machine cannot bias one
side. Both use the paper's beta = 1e-3 (reference-model forward included). Target (issue #3): <= 1.05x.
"""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch
from trl import GRPOConfig, GRPOTrainer

from bench.common import RESULTS_DIR, StepClock, machine
from modeling.loading import load_model_and_tokenizer
from modeling.tiny import build_tiny_model
from preprocess.contract import load_processed
from rewards.judge import judge
from rewards.rank_rewards import sequence_ndcg
from methods.rank_grpo.trainer import RankGRPOConfig, RankGRPOTrainer

# bench/run_all.py runs it and puts its row in the main table
REPORT = {"order": 2, "row": "| Training step"}

STEPS, BATCH, G, COMPLETION, ROUNDS = 6, 8, 4, 96, 3


def _data(workdir: Path):
    data_dir = RESULTS_DIR / "ml100k_bench"
    if not (data_dir / "catalog.json").exists():
        from preprocess import movielens

        movielens.main(["--output_dir", str(data_dir), "--max_samples_per_split", "200", "--no_progress"])
    splits, catalog = load_processed(data_dir)
    train = splits["train"].select(range(BATCH * STEPS // G * 2)).select_columns(["prompt", "groundtruth", "seen"])
    model_dir = workdir / "tiny"
    build_tiny_model(model_dir, dataset_path=str(data_dir), hidden_size=128, num_layers=4, intermediate_size=256)
    return train, catalog, model_dir


def _common(output_dir: Path) -> dict:
    return dict(output_dir=str(output_dir), use_cpu=True, report_to="none", max_steps=STEPS, seed=0,
                per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_generations=G,
                max_completion_length=COMPLETION, generation_kwargs={"min_new_tokens": COMPLETION},
                learning_rate=1e-5, beta=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)


def _time(trainer) -> float:
    timer = StepClock()
    trainer.add_callback(timer)
    trainer.train()
    return statistics.median(timer.wall[1:])  # first step warms caches


def row(r: dict) -> str:
    """The BENCHMARKS.md table row of a ``run()`` result (bench/run_all.py)."""
    return (f"| Training step, RankGRPOTrainer / stock GRPOTrainer ({r['setup']}) | {r['rank_grpo_s']:.3f} s vs "
            f"{r['grpo_s']:.3f} s per step | **{r['ratio']:.3f}x** | <= 1.05x |")


def run() -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train, catalog, model_dir = _data(tmp)

        def ndcg_reward(completions, groundtruth, seen, **kw):
            texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            return [sequence_ndcg(judge(t, catalog, gt, s).rel_at(20), len(gt)) for t, gt, s in zip(texts, groundtruth, seen)]

        def stock_step() -> float:
            model, tok = load_model_and_tokenizer(model_dir, padding_side="left")
            trainer = GRPOTrainer(model=model, reward_funcs=[ndcg_reward], train_dataset=train, processing_class=tok,
                                  args=GRPOConfig(**_common(tmp / "stock"), loss_type="bnpo"))
            return _time(trainer)

        def rank_step() -> float:
            model, tok = load_model_and_tokenizer(model_dir, padding_side="left")
            trainer = RankGRPOTrainer(model=model, train_dataset=train, processing_class=tok, catalog=catalog,
                                      args=RankGRPOConfig(**_common(tmp / "rank"), algorithm="rank_grpo",
                                                          reward_func="exp_inf"))
            return _time(trainer)

        stock_times, rank_times = [], []
        for _ in range(ROUNDS):
            stock_times.append(stock_step())
            rank_times.append(rank_step())
        t_stock, t_rank = min(stock_times), min(rank_times)
    return {
        "name": "step_time",
        "setup": (f"tiny Qwen3 4x128, batch {BATCH}, G {G}, {COMPLETION} completion tokens, beta 1e-3, "
                  f"best of {ROUNDS} alternating runs x {STEPS} steps, CPU 1 thread"),
        "rounds_rank_grpo_s": rank_times,
        "rounds_grpo_s": stock_times,
        "rank_grpo_s": t_rank,
        "grpo_s": t_stock,
        "ratio": t_rank / t_stock,
        "machine": machine(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
