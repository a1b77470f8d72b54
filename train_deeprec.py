"""DeepRec on a processed sequential data set: the LLM queries the TRM (train_trm.py) in several turns, then answers
with a top 10. Two RL stages (docs/methods.md §4). CleanRL style, one file: arguments -> data + TRM -> model -> trainer
-> train -> save.

    # CPU twin (tiny model on MovieLens-100k): TRM, optional format warm-start, then the two stages
    python train_trm.py --config configs/tiny/trm_ml100k.yaml
    python train_deeprec.py --config configs/tiny/deeprec_ml100k_stage1.yaml --write_warmstart_data \
        processed_datasets/ml100k_deeprec_warmstart                      # then train_sft.py on that folder
    python train_deeprec.py --config configs/tiny/deeprec_ml100k_stage1.yaml
    python train_deeprec.py --config configs/tiny/deeprec_ml100k_stage2.yaml
    # the paper's setup (Qwen2.5-7B base, ZeRO-2, colocated vLLM)
    accelerate launch --config_file configs/accelerate/zero2.yaml train_deeprec.py \
        --config configs/deeprec_qwen25_7b_stage1.yaml

Stage ``rec`` starts from a stage-1 run: ``--init_from <stage-1 output_dir>`` (its final model, or its highest
``checkpoint-N`` when it has no final model yet) or a model folder. The difficulty-based selection's counts are
written to ``<output_dir>/data_selection.json``. ``--warmstart_gate report|require --eval_split validation`` checks,
before RL, that the warm-started model writes valid episodes (greedy >= 90%, sampled >= 30%), prints the shares and
writes ``<output_dir>/warmstart_gate.json``. Evaluate with the seam's ``methods.deeprec.rollout.DeepRecRecommender``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import torch
from trl import TrlParser

from methods.deeprec.judge import ItemEmbeddings
from methods.deeprec.trainer import DeepRecConfig, DeepRecTrainer
from methods.deeprec.warmstart import WarmstartGateError, format_gate, warmstart_gate
from preprocess.deeprec_data import warmstart_records
from cli.args import CommonScriptArguments, OptionError, parse_config
from cli.run import run_script
from cli.run_logging import compose_run_name, configure_wandb, tee_output
from cli.training import start_rl_run, train_and_save
from evaluation.predictions import take_subset

logger = logging.getLogger("train_deeprec")


@dataclass
class ScriptArguments(CommonScriptArguments):
    """DeepRec's own script fields (the common ones: cli.args.CommonScriptArguments)."""

    init_from: str | None = field(default=None, metadata={
        "help": "Stage rec: the stage-1 run folder (its final model or highest checkpoint) or a model folder; "
                "overrides --model_name as the starting weights."})
    text_encoder: str | None = field(default=None, metadata={
        "help": "Text encoder of the TRM's preference texts (modeling.text_encoder.load_text_encoder; default "
                "all-MiniLM-L6-v2 offline). Must be the one the TRM was trained with."})
    embedding_cache_dir: str | None = field(default=None, metadata={
        "help": "Cache of encoded item titles (R_sim), .npy keyed by encoder and texts."})
    eval_split: str | None = field(default=None, metadata={"help": "Split to evaluate on during training."})
    warmstart_gate: str = field(default="off", metadata={
        "help": "Before RL, run greedy and sampled (the stage's temperature) episodes on --warmstart_gate_rows rows of "
                "--eval_split and print the share of valid ones (methods.deeprec.warmstart.warmstart_gate: greedy >= 0.9 "
                "and sampled >= 0.3 pass). off; report (print, write warmstart_gate.json, train anyway); require (stop "
                "with an error when it does not pass).", "choices": ["off", "report", "require"]})
    warmstart_gate_rows: int = field(default=32, metadata={"help": "Validation rows the warm-start gate runs on."})
    write_warmstart_data: str | None = field(default=None, metadata={
        "help": "Write the format warm-start SFT data set (scripted trajectories, chat prompts) to this folder "
                "and exit (train it with train_sft.py, then RL with prompt_style chat). Off by default."})


def parse_args(argv=None) -> tuple[ScriptArguments, DeepRecConfig]:
    parser = TrlParser((ScriptArguments, DeepRecConfig))
    if not torch.cuda.is_available():  # CPU machine: run on CPU in fp32 unless the config says otherwise
        parser.set_defaults(use_cpu=True, bf16=False)
    script_args, config = parse_config(parser, argv)  # every numeric option range-checked, named
    if script_args.dataset_path is None:
        raise OptionError("--dataset_path is required")
    if config.trm_path is None:
        raise OptionError("--trm_path is required (a TRM folder written by train_trm.py)")
    if script_args.model_name is None and script_args.init_from is None and not script_args.write_warmstart_data:
        raise OptionError("give --model_name (stage cold) or --init_from (stage rec)")
    if script_args.warmstart_gate not in ("off", "report", "require"):
        raise OptionError(f"--warmstart_gate must be off, report or require, got {script_args.warmstart_gate!r}")
    if script_args.warmstart_gate != "off" and not script_args.eval_split:
        raise OptionError("--warmstart_gate runs on validation rows: give --eval_split (e.g. validation)")
    return script_args, config


def main(argv=None, encoder=None):
    """``encoder``: a text encoder object (tests pass a small stand-in); default ``--text_encoder``."""
    script_args, config = parse_args(argv)
    with tee_output(script_args.log_file):
        return run(script_args, config, encoder)


def resolve_init(script_args: ScriptArguments, config: DeepRecConfig) -> str:
    from modeling.loading import list_checkpoints, resolve_checkpoint

    if script_args.init_from is None:
        if config.stage == "rec":
            logger.warning("stage rec without --init_from: starting from %s, not from a stage-1 run",
                           script_args.model_name)
        return resolve_checkpoint(script_args.model_name)
    root = script_args.init_from
    if os.path.isfile(os.path.join(root, "config.json")) or not list_checkpoints(root):
        return resolve_checkpoint(root)
    return resolve_checkpoint(root, "last")


def run(script_args: ScriptArguments, config: DeepRecConfig, encoder=None):
    start_rl_run(script_args, config, logger)

    from modeling.loading import check_model_source, check_weights_load, load_tokenizer, run_name
    from preprocess.contract import check_output_dir, load_processed, save_processed
    from retrieval.retriever import TRMRetriever
    from retrieval.text import encode_texts

    # ---- where the run writes, checked before the data, the TRM and the encoder load
    if script_args.write_warmstart_data:
        check_output_dir(script_args.write_warmstart_data, option="--write_warmstart_data")
    else:
        model_path = check_model_source(resolve_init(script_args, config))  # before the run folder exists
        check_weights_load(model_path)  # TRL loads it later and would leave missing weights random
        name = run_name(script_args.model_name or model_path)
        if config.output_dir in (None, "trainer_output"):
            config.output_dir = os.path.join("results", "deeprec", f"{name}_{config.stage}_lr{config.learning_rate}")
        check_output_dir(config.output_dir)

    # ---- data + TRM (frozen; retrieval in-process)
    dsd, catalog = load_processed(script_args.dataset_path, config.catalog_path)
    train, _ = take_subset(dsd["train"], script_args.max_train_samples, config.seed)
    n_before = len(train)
    train = train.filter(lambda x: x["target"] is not None)
    if len(train) < n_before:
        logger.warning("skipped %d training records without a target", n_before - len(train))
    if encoder is None:
        from modeling.text_encoder import load_text_encoder

        encoder = load_text_encoder(script_args.text_encoder)
    retriever = TRMRetriever.load(config.trm_path, encoder=encoder)

    # ---- optional: the format warm-start data set (scripted trajectories), then stop
    if script_args.write_warmstart_data:
        splits = {"train": warmstart_records(train, catalog, retriever, config, "train")}
        if script_args.eval_split:
            ev, _ = take_subset(dsd[script_args.eval_split], script_args.max_eval_samples, config.seed)
            splits["validation"] = warmstart_records(ev.filter(lambda x: x["target"] is not None), catalog,
                                                     retriever, config, "validation")
        summary = {"dataset": f"deeprec_warmstart({script_args.dataset_path})", "builder": "train_deeprec.py",
                   "trm_path": config.trm_path}
        save_processed(script_args.write_warmstart_data, splits, catalog.to_list(), summary, quiet=True,
                       progress=False)
        logger.info("warm-start data: %s", {k: len(v) for k, v in splits.items()})
        return splits

    # ---- run name (model path and output folder: checked above)
    if config.run_name in (None, config.output_dir, "trainer_output"):
        config.run_name = compose_run_name(name, f"deeprec-{config.stage}", config.learning_rate, config.beta,
                                           frozen_emb=config.freeze_token_embeddings or None)
    configure_wandb(config.output_dir, script_args.wandb_project)
    logger.info("model %s -> output %s (stage %s)", model_path, config.output_dir, config.stage)

    eval_ds = None
    if script_args.eval_split:
        eval_ds, _ = take_subset(dsd[script_args.eval_split], script_args.max_eval_samples, config.seed)
        eval_ds = eval_ds.filter(lambda x: x["target"] is not None)

    # ---- R_sim's item embeddings: title text embeddings (cached) + the TRM's item vectors
    item_embeddings = None
    if config.stage == "rec":
        titles = [catalog.display(int(i)) if int(i) in catalog else str(i) for i in retriever.catalog_ids]
        title_emb = encode_texts(encoder, titles, script_args.embedding_cache_dir)
        item_embeddings = ItemEmbeddings.from_retriever(retriever, title_emb)

    # ---- train
    tokenizer = load_tokenizer(model_path, padding_side="left")
    trainer = DeepRecTrainer(model=model_path, args=config, train_dataset=train, eval_dataset=eval_ds,
                             processing_class=tokenizer, catalog=catalog, retriever=retriever,
                             item_embeddings=item_embeddings)
    if trainer.accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "data_selection.json"), "w") as f:
            json.dump(trainer.selection_stats or {"difficulty_selection": False, "rows": len(train)}, f, indent=1)
    if script_args.warmstart_gate != "off":
        check_warmstart_gate(trainer, eval_ds, catalog, retriever, config, script_args)
    train_and_save(trainer, config, tokenizer, logger)
    logger.info("rollout seconds %s", {k: round(v, 2) for k, v in trainer.rollout_timings.items()})
    return trainer


def check_warmstart_gate(trainer, eval_ds, catalog, retriever, config: DeepRecConfig, script_args: ScriptArguments):
    """The warm-start gate before RL (every process runs the same rows; greedy and seeded sampling agree)."""
    rows = eval_ds.select(range(min(script_args.warmstart_gate_rows, len(eval_ds))))
    result = warmstart_gate(trainer.model, trainer.processing_class, rows, catalog, retriever, config)
    line = format_gate(result)
    if trainer.accelerator.is_main_process:
        print(line, flush=True)
        with open(os.path.join(config.output_dir, "warmstart_gate.json"), "w") as f:
            json.dump(result, f, indent=1)
    if script_args.warmstart_gate == "require" and not result["passed"]:
        raise WarmstartGateError(f"{line}: train the warm-start longer "
                                 "(configs/tiny/deeprec_ml100k_warmstart_sft.yaml) or run with --warmstart_gate report")
    return result


if __name__ == "__main__":
    raise SystemExit(run_script(main))
