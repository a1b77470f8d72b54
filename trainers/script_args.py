"""The arguments every root script shares, with ONE meaning each (README "Common arguments").

* Training scripts (TrlParser + YAML configs): subclass `CommonScriptArguments` (a plain dataclass) and pass it to
  `TrlParser((YourScriptArguments, YourConfig))`; cut the splits with `take_subset`.
* Evaluation scripts (argparse): `add_common_script_arguments(parser)`.

Fields that TRL's configs already own (`output_dir`, `seed`, `report_to`, `run_name`; `catalog_path`, `n_items`,
`require_year`, `max_prompt_length` in `RankGRPOConfig`) are not repeated in the dataclass: HfArgumentParser
refuses a flag defined twice. The eval scripts take the same flags with the same help (`COMMON_HELP`).

Subsets: `--max_train_samples`, `--max_eval_samples` (training) and `--max_samples` (evaluation) all mean a seeded
uniform random subset of N rows kept in split order (`evaluation.evaluate.subset_rows`; seed = `--seed`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from evaluation.evaluate import DEFAULT_SEED, subset_rows, take_subset

__all__ = ["COMMON_HELP", "DEFAULT_SEED", "CommonScriptArguments", "add_common_script_arguments",
           "require_year_arg", "subset_rows", "take_subset"]

_SUBSET = ("a seeded random subset of N rows of the {split} split, kept in split order (the same N and --seed "
           "pick the same rows in every script; default: every row)")

COMMON_HELP = {
    "dataset_path": "processed data set folder (processed_datasets/<name>, written by python -m preprocess.*)",
    "catalog_path": "catalog file (.json/.csv/.pkl/.item, e.g. Rank-GRPO's gt_catalog.pkl); default "
                    "<dataset_path>/catalog.json. Must describe the same ids as the data set's catalog.",
    "model_name": "HF hub id or local model folder",
    "max_train_samples": _SUBSET.format(split="train"),
    "max_eval_samples": _SUBSET.format(split="evaluation"),
    "max_samples": _SUBSET.format(split="evaluated"),
    "seed": f"random seed; also draws the --max_*samples subsets (default {DEFAULT_SEED})",
    "n_items": "list length N the prompt asks for (default 20)",
    "require_year": "auto|true|false: only `Title (Year)` lines count as items; auto = true unless the catalog has "
                    "no years (rewards.catalog.resolve_require_year)",
    "log_file": "also write stdout/stderr to this file (appended; other ranks write <file>.rank<N>)",
    "wandb_project": "sets WANDB_PROJECT (log with --report_to wandb)",
}


@dataclass
class CommonScriptArguments:
    """The fields every training script has (TrlParser reads them from the command line and the YAML config)."""

    dataset_path: str | None = field(default=None, metadata={"help": COMMON_HELP["dataset_path"]})
    model_name: str | None = field(default=None, metadata={"help": COMMON_HELP["model_name"]})
    max_train_samples: int | None = field(default=None, metadata={"help": COMMON_HELP["max_train_samples"]})
    max_eval_samples: int | None = field(default=None, metadata={"help": COMMON_HELP["max_eval_samples"]})
    wandb_project: str | None = field(default=None, metadata={"help": COMMON_HELP["wandb_project"]})
    log_file: str | None = field(default=None, metadata={"help": COMMON_HELP["log_file"]})


def require_year_arg(value: str | bool | None) -> bool | None:
    """`--require_year auto|true|false` -> None | True | False (None: from the catalog)."""
    if value is None or isinstance(value, bool):
        return value
    try:
        return {"auto": None, "true": True, "false": False}[str(value).lower()]
    except KeyError:
        raise ValueError(f"require_year must be auto, true or false, got {value!r}") from None


def add_common_script_arguments(parser) -> None:
    """The common data / run arguments of the argparse scripts (eval_test.py, eval_val.py)."""
    group = parser.add_argument_group("data (common to every script)")
    group.add_argument("--dataset_path", required=True, help=COMMON_HELP["dataset_path"])
    group.add_argument("--catalog_path", default=None, help=COMMON_HELP["catalog_path"])
    group.add_argument("--max_samples", type=int, default=None, help=COMMON_HELP["max_samples"])
    group.add_argument("--seed", type=int, default=DEFAULT_SEED, help=COMMON_HELP["seed"])
    group.add_argument("--n_items", type=int, default=20, help=COMMON_HELP["n_items"])
    group.add_argument("--require_year", choices=("auto", "true", "false"), default="auto",
                       help=COMMON_HELP["require_year"])
    group.add_argument("--log_file", default=None, help=COMMON_HELP["log_file"])


def start_rl_run(script_args, config, logger) -> None:
    """What every RL script does first: INFO logging (re-configured when output is tee'd to --log_file) and, on a
    machine without CUDA, ``use_vllm`` switched off with a warning (generation falls back to transformers)."""
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=bool(getattr(script_args, "log_file", None)))
    if getattr(config, "use_vllm", False) and not torch.cuda.is_available():
        logger.warning("--use_vllm needs a GPU; no CUDA device here, generating with transformers instead")
        config.use_vllm = False


def train_and_save(trainer, config, tokenizer, logger):
    """Train (resuming from ``--resume_from_checkpoint last|true|PATH``), save the final model and tokenizer into
    ``config.output_dir``; returns the trainer."""
    from modeling.loading import resolve_resume

    trainer.train(resume_from_checkpoint=resolve_resume(config.resume_from_checkpoint, config.output_dir))
    trainer.save_model(config.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(config.output_dir)
    logger.info("saved to %s", config.output_dir)
    return trainer
