"""train_rank_grpo.py: short CPU runs of rank_grpo / grpo / gspo on a tiny random model and a tiny contract data
set, an off-policy (mu = 2) Rank-GRPO run with micro-batch splitting, the configs, and the released README's
command line in a subprocess."""
from __future__ import annotations

import math
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO

torch.set_num_threads(1)

TITLES = [("The Matrix", 1999), ("Toy Story", 1995), ("Star Wars", 1977), ("Pulp Fiction", 1994), ("Fargo", 1996),
          ("The Godfather", 1972), ("Casablanca", 1942), ("Alien", 1979), ("Heat", 1995), ("Se7en", 1995),
          ("Twelve Monkeys", 1995), ("Jurassic Park", 1993), ("Titanic", 1997), ("Spirited Away", 2001)]
N_ITEMS = 5


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A processed data set (contract format, N = 5) + a tiny random Qwen3 with a small byte-level BPE."""
    from modeling.tiny import build_tiny_model
    from preprocess.common import build_prompt, format_completion
    from preprocess.contract import save_processed

    root = tmp_path_factory.mktemp("rank_grpo_run")
    catalog = [{"id": i, "title": t, "year": y} for i, (t, y) in enumerate(TITLES)]
    recs = []
    for s in range(8):
        ids = [(s + j) % len(TITLES) for j in range(N_ITEMS + 1)]
        recs.append(dict(sample_id=f"s{s}", prompt=build_prompt(f"I liked {TITLES[ids[0]][0]}.", n_items=N_ITEMS),
                         completion=format_completion([f"{TITLES[i][0]} ({TITLES[i][1]})" for i in ids[1:]]),
                         groundtruth=ids[1:4], seen=[ids[0]], history=[], target=None, timestamp=None))
    data = root / "data"
    save_processed(data, {"train": recs[:6], "validation": recs[6:]}, catalog, {"name": "tiny"}, quiet=True,
                   progress=False)
    model = root / "model"
    build_tiny_model(model, tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    return root, data, model


COMMON = ["--n_items", str(N_ITEMS), "--per_device_train_batch_size", "4", "--num_generations", "2",
          "--gradient_accumulation_steps", "1", "--max_completion_length", "24", "--max_prompt_length", "256",
          "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
          "--activation_checkpointing", "false", "--dataloader_num_workers", "0", "--seed", "0"]


def _finite_logs(trainer):
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        for k, v in h.items():
            if isinstance(v, float):
                assert math.isfinite(v), (k, v)
    return logs


@pytest.mark.parametrize("algorithm", ["rank_grpo", "grpo", "gspo"])
def test_short_training_runs(tiny_setup, tmp_path, algorithm):
    import train_rank_grpo

    _, data, model = tiny_setup
    out = tmp_path / "out"
    trainer = train_rank_grpo.main(["--dataset_path", str(data), "--model_name", str(model), "--algorithm",
                                    algorithm, "--output_dir", str(out), "--kl_beta", "0.01", *COMMON])
    logs = _finite_logs(trainer)
    assert trainer.args.algorithm == algorithm
    if algorithm == "gspo":
        assert (trainer.args.importance_sampling_level, trainer.epsilon_low, trainer.epsilon_high) == \
            ("sequence", 3e-4, 4e-4)
    if algorithm == "rank_grpo":
        assert "rewards/pos_1/mean" in logs[0] and "item_ratio/mean" in logs[0] and "rewards/tail/mean" in logs[0]
        assert logs[0]["rewards/rank_exp_inf/mean"] + logs[0]["rewards/length_shaping/mean"] == \
            pytest.approx(logs[0]["reward"])
    else:
        assert "rewards/ndcg/mean" in logs[0]
    assert "ndcg" in logs[0] and "length/early_stop_rate" in logs[0]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()


def test_off_policy_rank_grpo_run_with_canned_lists(tiny_setup, tmp_path):
    """mu = 2 and 2 micro-batches per generation: TRL computes old log-probs, splits/shuffles the generation batch
    (our item_index / (B, N+1) advantages must follow), and the item ratios move away from 1."""
    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed
    from methods.rank_grpo.trainer import RankGRPOConfig, RankGRPOTrainer

    _, data, model = tiny_setup
    tok = load_tokenizer(model)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    lists = ["\n".join(f"{t} ({y})" for t, y in TITLES[s:s + N_ITEMS]) for s in range(4)]
    lists.append("Here you go:\n\n" + lists[0] + "\nAnd one more: Heat (1995)")
    canned = [tok.encode(t) + [eos] for t in lists]

    class Canned(RankGRPOTrainer):
        pos = 0

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            out = [canned[(self.pos + i) % len(canned)] for i in range(len(prompt_ids))]
            self.pos += 1
            return out, None

    dsd, catalog = load_processed(data)
    cfg = RankGRPOConfig(output_dir=str(tmp_path / "out"), n_items=N_ITEMS, num_generations=2,
                         per_device_train_batch_size=2, gradient_accumulation_steps=2, num_iterations=2,
                         max_steps=2, learning_rate=1e-2, beta=0.01, max_completion_length=64, logging_steps=1,
                         save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                         activation_checkpointing=False, seed=0, rank_normalization="token")
    trainer = Canned(model=str(model), args=cfg, train_dataset=dsd["train"], processing_class=tok, catalog=catalog)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = _finite_logs(trainer)
    assert any(h["loss"] != 0 for h in logs)
    assert logs[0]["hit_rate"] > 0
    # the second optimisation pass over the same generations sees updated weights: ratio != 1
    assert logs[1]["item_ratio/mean"] != pytest.approx(1.0, abs=1e-9)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_configs_parse():
    from trl import TrlParser

    from train_rank_grpo import ScriptArguments
    from methods.rank_grpo.trainer import RankGRPOConfig

    for name in ("rank_grpo_qwen25_0.5b.yaml", "rank_grpo_llama32_3b.yaml", "tiny/rank_grpo_ml100k.yaml",
                 "tiny/rank_grpo_redial.yaml"):
        path = REPO / "configs" / name
        cfg = yaml.safe_load(path.read_text())
        overrides = ["--use_cpu", "true", "--bf16", "false", "--use_vllm", "false"]  # parse on a CPU machine
        script, args = TrlParser((ScriptArguments, RankGRPOConfig)).parse_args_and_config(
            ["--config", str(path), *overrides])
        assert args.algorithm == "rank_grpo" and args.reward_func == "exp_inf"
        assert (args.epsilon, args.epsilon_high) == (0.06, 0.08)
        if not name.startswith("tiny"):
            assert (cfg["per_device_train_batch_size"], cfg["gradient_accumulation_steps"], cfg["num_generations"],
                    cfg["learning_rate"], cfg["beta"], cfg["max_completion_length"]) == (16, 6, 8, 1e-6, 1e-3, 1024)
            assert cfg["use_vllm"] is True and cfg["vllm_mode"] == "colocate" and cfg["bf16"] is True
        _, gspo = TrlParser((ScriptArguments, RankGRPOConfig)).parse_args_and_config(
            ["--config", str(path), *overrides, "--algorithm", "gspo"])
        assert (gspo.reward_func, gspo.epsilon, gspo.epsilon_high) == ("ndcg", 3e-4, 4e-4)


def test_released_readme_command_line(tiny_setup, tmp_path):
    """The seed README's Rank-GRPO command line, with tiny values, in a subprocess. On a CPU machine --use_vllm is
    turned off with a warning (generation falls back to transformers)."""
    _, data, model = tiny_setup
    shutil.copytree(data, tmp_path / "processed_datasets" / "grpo" / "grpo_dataset")
    shutil.copytree(model, tmp_path / "results" / "qwen" / "Qwen2.5-0.5B-Instruct" / "checkpoint-1500")
    with open(tmp_path / "gt_catalog.pkl", "wb") as fh:  # Rank-GRPO's catalog format: (title, year) tuples
        pickle.dump([(t, y) for t, y in TITLES], fh)
    cmd = [sys.executable, str(REPO / "train_rank_grpo.py"),
           "--train_path", "processed_datasets/grpo/grpo_dataset",
           "--model_name", "qwen/Qwen2.5-0.5B-Instruct",
           "--sft_checkpoint", "1500",
           "--reward_func", "exp_inf",
           "--mu", "1",
           "--lr", "1e-6",
           "--kl_beta", "1e-3",
           "--adam_beta1", "0.9",
           "--adam_beta2", "0.99",
           "--per_device_train_batch_size", "2",
           "--per_device_eval_batch_size", "2",
           "--num_train_epochs", "2",
           "--gradient_accumulation_steps", "1",
           "--save_strategy", "steps",
           "--save_steps", "200",
           "--logging_steps", "1",
           "--use_vllm",
           "--vllm_mode", "colocate",
           "--vllm_gpu_memory_utilization", "0.5",
           "--vllm_tensor_parallel_size", "4",
           "--max_prompt_length", "256",
           "--max_completion_length", "16",
           "--num_generations", "2",
           "--seed", "3407",
           "--wandb_project", "rank_grpo",
           "--catalog_path", "gt_catalog.pkl",
           # tiny-run extras (not in the README): stop after 2 steps, N = 5, fp32 CPU, tee the log
           "--max_steps", "2", "--n_items", str(N_ITEMS), "--report_to", "none",
           "--log_file", "logs/outputs_tiny.txt"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "results" / "grpo" / "qwen" / "Qwen2.5-0.5B-Instruct_lr1e-06_kl0.001"
    assert (out / "model.safetensors").is_file(), list(tmp_path.rglob("*"))[:50]
    log = (tmp_path / "logs" / "outputs_tiny.txt").read_text()
    assert '"rewards/rank_exp_inf/mean"' in log and "train_runtime" in log  # the full [metrics] {json} record
    if not torch.cuda.is_available():
        assert "--use_vllm needs a GPU" in log


def test_rl_configs_find_the_sft_runs_they_start_from():
    """Each RL config's SFT checkpoint (`--sft_checkpoint` under results/<run_name(model_name)>, or the tiny twins'
    model folder) is where the matching SFT config writes."""
    from modeling.loading import run_name

    sft_gpu = yaml.safe_load((REPO / "configs" / "sft_qwen25_0.5b.yaml").read_text())
    rl_gpu = yaml.safe_load((REPO / "configs" / "rank_grpo_qwen25_0.5b.yaml").read_text())
    assert rl_gpu["model_name"] == sft_gpu["model_name"] and rl_gpu["sft_checkpoint"] == "last"
    assert sft_gpu["output_dir"] == f"results/{run_name(rl_gpu['model_name'])}"

    sft_tiny = yaml.safe_load((REPO / "configs" / "tiny" / "sft_ml100k.yaml").read_text())
    rl_tiny = yaml.safe_load((REPO / "configs" / "tiny" / "rank_grpo_ml100k.yaml").read_text())
    assert rl_tiny["model_name"] == sft_tiny["output_dir"] and rl_tiny["dataset_path"] == sft_tiny["dataset_path"]
