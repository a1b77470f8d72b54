"""RecPO / R²ec on a processed sequential data set: the model reasons, then ranks the whole catalog with its own
hidden state at ``<answer>``. CleanRL style, one file: arguments -> data -> model -> trainer -> train -> save.

    # CPU twin (tiny model on MovieLens-100k)
    python train_recpo.py --config configs/tiny/recpo_ml100k.yaml
    # the released setup (3 GPUs, ZeRO-2, LoRA r 4 / alpha 128, colocated vLLM)
    accelerate launch --config_file configs/accelerate/zero2.yaml train_recpo.py --config configs/recpo_qwen25_3b.yaml

Records need ``history`` and ``target`` (catalog ids): ``python -m preprocess.movielens`` and
``python -m preprocess.amazon`` write them. The item table (every catalog item encoded by the model) is rebuilt at
the start and every ``--refresh_steps``. Evaluate a run with ``eval_test.py --recpo --checkpoint ...``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from trl import TrlParser

from methods.recpo.trainer import RecPOConfig, RecPOTrainer
from cli.args import CommonScriptArguments, OptionError, parse_config
from cli.run import run_script
from cli.run_logging import compose_run_name, configure_wandb, tee_output
from cli.training import start_rl_run, train_and_save
from evaluation.predictions import take_subset

logger = logging.getLogger("train_recpo")


@dataclass
class ScriptArguments(CommonScriptArguments):
    """RecPO's own script fields (the common ones: cli.args.CommonScriptArguments)."""

    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on during training (e.g. validation); default none."})
    lora_r: int | None = field(default=None, metadata={"help": "Train a LoRA adapter of this rank (R²ec: 4)."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha (R²ec: 128)."})


def parse_args(argv=None) -> tuple[ScriptArguments, RecPOConfig]:
    parser = TrlParser((ScriptArguments, RecPOConfig))
    if not torch.cuda.is_available():  # CPU machine: run on CPU in fp32 unless the config says otherwise
        parser.set_defaults(use_cpu=True, bf16=False)
    script_args, config = parse_config(parser, argv)  # every numeric option range-checked, named
    if script_args.dataset_path is None or script_args.model_name is None:
        raise OptionError("--dataset_path and --model_name are required")
    if script_args.lora_r is not None and script_args.lora_r < 1:
        raise OptionError(f"--lora_r must be an integer >= 1 (or omitted: no LoRA), got {script_args.lora_r}")
    return script_args, config


def main(argv=None):
    script_args, config = parse_args(argv)
    with tee_output(script_args.log_file):
        return run(script_args, config)


def run(script_args: ScriptArguments, config: RecPOConfig):
    start_rl_run(script_args, config, logger)

    from modeling.loading import check_model_source, check_weights_load, load_tokenizer, resolve_checkpoint, run_name
    from preprocess.contract import DataError, check_output_dir, load_processed

    # ---- model path and output folder, checked before anything heavy runs
    model_path = check_model_source(resolve_checkpoint(script_args.model_name))  # before the run folder exists
    check_weights_load(model_path)  # TRL loads it later and would leave missing weights random
    name = run_name(script_args.model_name)
    if config.output_dir in (None, "trainer_output"):
        config.output_dir = os.path.join("results", "recpo", f"{name}_lr{config.learning_rate}_b{config.reward_beta}")
    if config.run_name in (None, config.output_dir, "trainer_output"):
        config.run_name = compose_run_name(  # deviations from the paper's in-batch InfoNCE are named
            name, "recpo", config.learning_rate, config.beta, reward_beta=config.reward_beta,
            uniform_neg=config.num_uniform_negatives if config.rec_negatives == "in_batch+uniform" else None,
            logq=config.logq_correction, rec_warmup=config.rec_warmup_steps or None,
            frozen_emb=config.freeze_token_embeddings or None)
    check_output_dir(config.output_dir)
    configure_wandb(config.output_dir, script_args.wandb_project)
    logger.info("model %s -> output %s", model_path, config.output_dir)

    # ---- data: only sequential records (a history and a target) can train RecPO
    dsd, catalog = load_processed(script_args.dataset_path, config.catalog_path)
    train, _ = take_subset(dsd["train"], script_args.max_train_samples, config.seed)
    columns = [c for c in ("sample_id", "history", "target", "seen", "history_ratings", "history_time_deltas")
               if c in train.column_names]
    if "target" not in columns or "history" not in columns:
        raise DataError(f"{script_args.dataset_path}/train", field="target" if "history" in columns else "history",
                        reason="missing column: RecPO needs `history` and `target` (a sequential data set such as "
                               "preprocess.movielens / preprocess.amazon)")
    n_before = len(train)
    train = train.filter(lambda x: x["target"] is not None).select_columns(columns)
    if len(train) < n_before:
        logger.warning("skipped %d training records without a target", n_before - len(train))
    eval_ds = None
    if script_args.eval_split:
        eval_ds, _ = take_subset(dsd[script_args.eval_split], script_args.max_eval_samples, config.seed)
        eval_ds = eval_ds.filter(lambda x: x["target"] is not None).select_columns(columns)
    logger.info("data %s: %d train records, catalog %d items", script_args.dataset_path, len(train), len(catalog))

    # ---- model: TRL loads it from the path (ZeRO friendly); LoRA through TRL's peft_config
    tokenizer = load_tokenizer(model_path, padding_side="left")
    peft_config = None
    if script_args.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=script_args.lora_r, lora_alpha=script_args.lora_alpha, task_type="CAUSAL_LM",
                                 target_modules="all-linear")

    # ---- train
    trainer = RecPOTrainer(model=model_path, args=config, train_dataset=train, eval_dataset=eval_ds,
                           processing_class=tokenizer, catalog=catalog, peft_config=peft_config)
    return train_and_save(trainer, config, tokenizer, logger)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
