"""The released Rank-GRPO README's pipeline, command line by command line, with tiny values, on CPU.

Users arrive with that README in hand (../shared/seeds/000_*.txt). Each step below is its command line as written
(same flags, same relative paths) in a scratch working directory, with only the sizes scaled down and a few
CPU-only extras marked as such: SFT -> SFT validation sweep -> Rank-GRPO from an SFT checkpoint -> GRPO validation
sweep -> final test evaluation of a Rank-GRPO checkpoint. The steps chain: each reads what the previous one wrote.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from test_train_rank_grpo import N_ITEMS, TITLES, tiny_setup  # noqa: F401  (fixture reuse)

MODEL = "qwen/Qwen2.5-0.5B-Instruct"  # the README's model name; a local tiny model sits at that relative path


def _run(args, cwd, timeout=600, **env_extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="offline", HF_HUB_OFFLINE="1", **env_extra)
    proc = subprocess.run([sys.executable, str(REPO / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def workdir(tiny_setup, tmp_path_factory):  # noqa: F811
    _, data, model = tiny_setup
    root = tmp_path_factory.mktemp("seed_pipeline")
    shutil.copytree(model, root / MODEL)
    shutil.copytree(data, root / "processed_datasets" / "sft_dataset")
    # the shared tiny set has train/validation only; the final evaluation reads a test split
    # (a copy of validation under its own sample ids: ids are unique across the splits of a data set)
    import datasets

    val = datasets.load_from_disk(str(root / "processed_datasets" / "sft_dataset" / "validation"))
    val.map(lambda x: {"sample_id": "test-" + x["sample_id"]}).save_to_disk(
        str(root / "processed_datasets" / "sft_dataset" / "test"))
    shutil.copytree(data, root / "processed_datasets" / "grpo" / "grpo_dataset")
    for where in (root / "gt_catalog.pkl", root / "processed_datasets" / "gt_catalog.pkl"):
        with open(where, "wb") as fh:  # Rank-GRPO's catalog format: a pickled list of (title, year) tuples
            pickle.dump([(t, y) for t, y in TITLES], fh)
    (root / "logs").mkdir()
    return root


def test_released_readme_pipeline(workdir):
    sft_run = workdir / "results" / "Qwen2.5-0.5B-Instruct"  # results/<run_name(model_name)>

    # SFT stage (README: train_sft.py ...), sizes scaled down
    _run(["train_sft.py", "--dataset_path", "./processed_datasets/sft_dataset", "--model_name", MODEL,
          "--num_train_epochs", "1", "--learning_rate", "5e-5", "--warmup_ratio", "0.05",
          "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
          "--gradient_accumulation_steps", "1", "--save_strategy", "steps", "--save_steps", "2",
          "--eval_strategy", "steps", "--eval_steps", "2", "--logging_steps", "1",
          "--report_to", "none"],  # CPU extra: no wandb login here
         workdir)
    assert (sft_run / "checkpoint-2" / "config.json").is_file(), sorted(p.name for p in sft_run.iterdir())

    # SFT evaluation (README: eval_sft.py ...) -> eval_val.py with the same flags
    _run(["eval_val.py", "--model_name", MODEL, "--model_root", str(sft_run),
          "--dataset_path", "processed_datasets/sft_dataset", "--catalog_path", "processed_datasets/gt_catalog.pkl",
          "--wandb_project", "sft_eval_val", "--upload_wandb",
          "--n_items", str(N_ITEMS), "--max_new_tokens", "16"],  # tiny extras
         workdir)
    sft_rows = (sft_run / "eval_validation.csv").read_text().strip().splitlines()
    assert len(sft_rows) == 1 + len([p for p in sft_run.glob("checkpoint-*")])  # header + one row per checkpoint
    assert (sft_run / "eval_validation.png").is_file()

    # Rank-GRPO (README: grpo_test_qwen25_0.5b_with_kl.py ...) from SFT checkpoint 2
    grpo_run = workdir / "results" / "grpo" / "Qwen2.5-0.5B-Instruct_lr1e-06_kl0.001"
    _run(["train_rank_grpo.py", "--train_path", "processed_datasets/grpo/grpo_dataset", "--model_name", MODEL,
          "--sft_checkpoint", "2", "--reward_func", "exp_inf", "--mu", "1", "--lr", "1e-6", "--kl_beta", "1e-3",
          "--adam_beta1", "0.9", "--adam_beta2", "0.99", "--per_device_train_batch_size", "2",
          "--per_device_eval_batch_size", "2", "--num_train_epochs", "2", "--gradient_accumulation_steps", "1",
          "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", "--use_vllm",
          "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.5", "--vllm_tensor_parallel_size", "4",
          "--max_prompt_length", "256", "--max_completion_length", "16", "--num_generations", "2",
          "--seed", "3407", "--wandb_project", "rank_grpo", "--catalog_path", "gt_catalog.pkl",
          "--max_steps", "2", "--n_items", str(N_ITEMS), "--report_to", "none",  # tiny extras
          "--log_file", "logs/outputs_qwen25_0.5b_zero.txt"],  # the README tees to this file
         workdir)
    assert (grpo_run / "checkpoint-1").is_dir() and (grpo_run / "checkpoint-2").is_dir()
    assert "rewards/pos_1/mean" in (workdir / "logs" / "outputs_qwen25_0.5b_zero.txt").read_text()

    # GRPO validation (README: eval_grpo_val.py ... --step_interval 200) -> eval_val.py
    _run(["eval_val.py", "--model_name", MODEL, "--model_root", str(grpo_run),
          "--dataset_path", "processed_datasets/sft_dataset", "--catalog_path", "processed_datasets/gt_catalog.pkl",
          "--wandb_project", "grpo_eval_val", "--upload_wandb", "--step_interval", "2",
          "--n_items", str(N_ITEMS), "--max_new_tokens", "16"],  # tiny extras
         workdir)
    rows = (grpo_run / "eval_validation.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[0] == "2"  # only multiples of --step_interval

    # final test evaluation (README: grpo_test.py ... --checkpoint 15800) -> eval_test.py
    _run(["eval_test.py", "--model_name", MODEL, "--model_root", str(grpo_run),
          "--dataset_path", "processed_datasets/sft_dataset", "--catalog_path", "processed_datasets/gt_catalog.pkl",
          "--checkpoint", "2", "--n_items", str(N_ITEMS), "--max_new_tokens", "16"],  # tiny extras
         workdir)
    metrics = json.loads((grpo_run / "checkpoint-2" / "eval_test" / "metrics.json").read_text())
    assert metrics["protocol"] == "packed" and metrics["num_samples"] > 0
    assert all(0.0 <= metrics[f"recall@{k}"] <= 1.0 for k in (5, 10, 15, 20))
