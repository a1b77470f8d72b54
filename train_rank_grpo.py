"""Rank-GRPO (and the GRPO / GSPO baselines) on a processed recommendation data set. CleanRL style, one file:
arguments -> data -> model -> trainer -> train -> save.

    # CPU demo (tiny random model from the SFT demo run)
    python train_rank_grpo.py --config configs/tiny/rank_grpo_ml100k.yaml
    # the paper's setup (4 GPUs, ZeRO-3, colocated vLLM)
    accelerate launch --config_file configs/accelerate/zero3.yaml train_rank_grpo.py \
        --config configs/rank_grpo_qwen25_0.5b.yaml --dataset_path processed_datasets/reddit_v2 --sft_checkpoint 1500

The released README's command line works as is (``--train_path --model_name --sft_checkpoint N --reward_func --mu
--lr --kl_beta ...``): ``--lr`` is ``learning_rate``, ``--kl_beta`` is ``beta``, ``--mu`` is ``num_iterations``,
``--train_path`` is ``--dataset_path``, ``--sft_checkpoint N`` loads ``results/<run_name(model_name)>/checkpoint-N``
(the SFT run folder, see train_sft.py) or a path. ``--algorithm grpo|gspo`` runs the baselines.
The default output folder is ``results/grpo/<run_name>_lr{lr}_kl{beta}`` like the released layout (with an
``_<algorithm>_<reward>`` suffix for anything but Rank-GRPO with exp_inf).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from trl import TrlParser

from methods.rank_grpo.trainer import RankGRPOConfig, trainer_class
from cli.args import CommonScriptArguments, OptionError, parse_config
from cli.run import run_script
from cli.run_logging import compose_run_name, configure_wandb, tee_output
from cli.training import start_rl_run, train_and_save
from evaluation.predictions import take_subset

logger = logging.getLogger("train_rank_grpo")


@dataclass
class ScriptArguments(CommonScriptArguments):
    """Rank-GRPO's own fields; dataset_path, model_name, max_train_samples / max_eval_samples (seeded random
    subsets, seed = --seed), wandb_project and log_file come from cli.args.CommonScriptArguments."""

    train_path: str | None = field(default=None, metadata={"help": "Alias of --dataset_path (released README)."})
    sft_checkpoint: str | None = field(
        default=None,
        metadata={"help": "N: results/<run_name(model_name)>/checkpoint-N (or --sft_run_dir/checkpoint-N); 'last'; "
                  "or a model folder. Omitted: train --model_name itself."},
    )
    sft_run_dir: str | None = field(
        default=None, metadata={"help": "SFT run folder (default results/<run_name(model_name)>)."})
    lr: float | None = field(default=None, metadata={"help": "Alias of --learning_rate."})
    kl_beta: float | None = field(default=None, metadata={"help": "Alias of --beta (KL coefficient)."})
    mu: int | None = field(default=None, metadata={"help": "Alias of --num_iterations (updates per generation)."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on during training (e.g. validation); default none."})


def parse_args(argv=None) -> tuple[ScriptArguments, RankGRPOConfig]:
    parser = TrlParser((ScriptArguments, RankGRPOConfig))
    if not torch.cuda.is_available():  # CPU machine: run on CPU in fp32 unless the config says otherwise
        parser.set_defaults(use_cpu=True, bf16=False)
    script_args, config = parse_config(parser, argv)  # every numeric option range-checked, named

    # aliases of the released README
    if script_args.train_path:
        if script_args.dataset_path and script_args.dataset_path != script_args.train_path:
            raise OptionError("--train_path and --dataset_path disagree; give one")
        script_args.dataset_path = script_args.train_path
    if script_args.dataset_path is None:
        raise OptionError("--dataset_path (or --train_path) is required")
    if script_args.lr is not None:
        config.learning_rate = script_args.lr
    if script_args.kl_beta is not None:
        config.beta = script_args.kl_beta
    if script_args.mu is not None:
        config.num_iterations = script_args.mu
    if script_args.model_name is None and script_args.sft_checkpoint is None:
        raise OptionError("give --model_name (and optionally --sft_checkpoint)")
    return script_args, config


def resolve_model_path(script_args: ScriptArguments) -> str:
    from modeling.loading import resolve_checkpoint, run_name

    ckpt = script_args.sft_checkpoint
    if ckpt is None:
        return resolve_checkpoint(script_args.model_name)
    if str(ckpt).isdigit() or str(ckpt).lower() in ("last", "latest"):
        if script_args.model_name is None and script_args.sft_run_dir is None:
            raise OptionError("--sft_checkpoint N needs --model_name (or --sft_run_dir) to find the SFT run folder")
        run_dir = script_args.sft_run_dir or os.path.join("results", run_name(script_args.model_name))
        return resolve_checkpoint(run_dir, ckpt)
    return resolve_checkpoint(ckpt)


def main(argv=None):
    script_args, config = parse_args(argv)
    with tee_output(script_args.log_file):
        return run(script_args, config)


def run(script_args: ScriptArguments, config: RankGRPOConfig):
    start_rl_run(script_args, config, logger)

    from modeling.loading import (check_model_source, check_weights_load, is_adapter_dir, load_model_and_tokenizer,
                                  load_tokenizer, run_name)
    from preprocess.contract import check_output_dir, load_processed

    # ---- model path and output folder, checked before anything heavy runs
    model_path = check_model_source(resolve_model_path(script_args))  # before the run folder exists
    check_weights_load(model_path)  # TRL loads it later and would leave missing weights random
    name = run_name(script_args.model_name or model_path)
    if config.output_dir in (None, "trainer_output"):  # the released layout; baselines / other rewards get a suffix
        folder = f"{name}_lr{config.learning_rate}_kl{config.beta}"
        if (config.algorithm, config.reward_func) != ("rank_grpo", "exp_inf"):
            folder += f"_{config.algorithm}_{config.reward_func}"
        if config.rank_advantage != "rank_zscore":
            folder += f"_{config.rank_advantage}"
        if config.freeze_token_embeddings:
            folder += "_frozen_emb"
        if config.item_aware_decoding:
            folder += "_item_aware"
        config.output_dir = os.path.join("results", "grpo", folder)
    if config.run_name in (None, config.output_dir, "trainer_output"):
        deviation = None if config.rank_advantage == "rank_zscore" else config.rank_advantage
        config.run_name = compose_run_name(name, config.algorithm, config.learning_rate, config.beta,
                                           reward=config.reward_func, adv=deviation,
                                           frozen_emb=config.freeze_token_embeddings or None,
                                           item_aware=config.item_aware_decoding or None)
    check_output_dir(config.output_dir)
    configure_wandb(config.output_dir, script_args.wandb_project)  # offline: wandb files stay in the run
    logger.info("model %s -> output %s (algorithm %s, reward %s)", model_path, config.output_dir, config.algorithm,
                config.reward_func)

    # ---- data
    dsd, catalog = load_processed(script_args.dataset_path, config.catalog_path)
    train, _ = take_subset(dsd["train"], script_args.max_train_samples, config.seed)
    keep = [c for c in ("prompt", "groundtruth", "seen", "sample_id") if c in train.column_names]
    train = train.select_columns(keep)
    eval_ds = None
    if script_args.eval_split:
        eval_ds, _ = take_subset(dsd[script_args.eval_split], script_args.max_eval_samples, config.seed)
        eval_ds = eval_ds.select_columns(keep)
    logger.info("data %s: %d train records%s, catalog %d items", script_args.dataset_path, len(train),
                f", {len(eval_ds)} eval" if eval_ds is not None else "", len(catalog))

    # ---- model + tokenizer (TRL loads the policy and the reference from the path, ZeRO-3 friendly)
    if is_adapter_dir(model_path):  # LoRA SFT: merge once so policy and reference both load the SFT weights
        merged = os.path.join(config.output_dir, "sft_merged")
        if not os.path.isfile(os.path.join(merged, "config.json")):
            m, t = load_model_and_tokenizer(model_path)
            m.save_pretrained(merged)
            t.save_pretrained(merged)
        model_path = merged
    tokenizer = load_tokenizer(model_path, padding_side="left")

    # ---- train
    trainer = trainer_class(config.algorithm)(model=model_path, args=config, train_dataset=train,
                                              eval_dataset=eval_ds, processing_class=tokenizer, catalog=catalog)
    return train_and_save(trainer, config, tokenizer, logger)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
