"""The arguments every root script shares, with ONE meaning each (docs/evaluation.md "Common arguments").

* Training scripts (TrlParser + YAML configs): subclass `CommonScriptArguments` (a plain dataclass) and pass it to
  `TrlParser((YourScriptArguments, YourConfig))`; cut the splits with `evaluation.predictions.take_subset`.
* Evaluation scripts (argparse): `add_common_script_arguments(parser)`.

Fields that TRL's configs already own (`output_dir`, `seed`, `report_to`, `run_name`; `catalog_path`, `n_items`,
`require_year`, `max_prompt_length` in `RankGRPOConfig`) are not repeated in the dataclass: HfArgumentParser
refuses a flag defined twice. The eval scripts take the same flags with the same help (`COMMON_HELP`).

Numeric options: `validate_options` checks every numeric field of the parsed objects against ONE table
(`NUMERIC_RULES`, field -> allowed range) at parse time and raises `OptionError` naming the option, so a bad value
never reaches numpy, the first generation, or a run that trains nothing. `parse_config` turns TrlParser's own
errors (an unreadable --config, an unknown key, TrainingArguments' checks) into `OptionError` too.

Subsets: `--max_train_samples`, `--max_eval_samples` (training) and `--max_samples` (evaluation) all mean a seeded
uniform random subset of N rows kept in split order (`evaluation.predictions.subset_rows`; seed = `--seed`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from evaluation.predictions import DEFAULT_SEED


class OptionError(ValueError):
    """A command-line / --config option with a value the script cannot run with; the message starts with the
    option's name."""

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


# field -> (kind, low, high): kind "int" or "float"; low/high are (value, inclusive) or None (unbounded). A field
# is checked in every parsed object that has it, when its value is not None. "max_steps" allows -1 (= from epochs).
_GT0, _GE0 = ((0, False), None), ((0, True), None)
_INT1, _INT0, _INT2 = ("int", (1, True), None), ("int", (0, True), None), ("int", (2, True), None)
NUMERIC_RULES: dict[str, tuple] = {
    # optimisation (TrainingArguments and the scripts' own)
    "learning_rate": ("float", *_GT0), "lr": ("float", *_GT0),
    "weight_decay": ("float", *_GE0), "max_grad_norm": ("float", *_GE0),
    "num_train_epochs": ("float", *_GT0), "num_epochs": ("float", *_GT0),
    "warmup_steps": ("float", *_GE0), "warmup_ratio": ("float", (0, True), (1, False)),
    "per_device_train_batch_size": _INT1, "per_device_eval_batch_size": _INT1, "batch_size": _INT1,
    "gradient_accumulation_steps": _INT1, "logging_steps": ("float", *_GT0), "save_steps": ("float", *_GT0),
    "seed": _INT0, "data_seed": _INT0, "num_threads": _INT0,
    # data
    "max_train_samples": _INT1, "max_eval_samples": _INT1, "n_items": _INT1, "max_history": _INT1,
    "max_length": _INT1, "max_prompt_length": _INT1, "eval_ks": _INT1, "log_every": _INT1,
    "max_samples": _INT1, "max_new_tokens": _INT1, "step_interval": _INT1,
    # generation backends (eval scripts; vLLM)
    "tensor_parallel_size": _INT1, "max_model_len": _INT1, "gpu_memory_utilization": ("float", (0, False), (1, True)),
    "vllm_gpu_memory_utilization": ("float", (0, False), (1, True)),
    # GRPO family (TRL's GRPOConfig and the RL configs)
    "beta": ("float", *_GE0), "kl_beta": ("float", *_GE0),
    "num_iterations": _INT1, "mu": _INT1, "num_generations": _INT2,
    "temperature": ("float", *_GT0), "top_p": ("float", (0, False), (1, True)), "top_k": _INT0,
    "max_completion_length": _INT1, "epsilon": ("float", *_GE0), "epsilon_high": ("float", *_GE0),
    # RecPO
    "tau": ("float", *_GT0), "reward_beta": ("float", (0, True), (1, True)), "ndcg_cutoff": _INT1,
    "rec_loss_weight": ("float", *_GE0), "num_uniform_negatives": _INT0, "refresh_steps": _INT1,
    "item_batch_size": _INT1, "projection_dim": _INT1, "rec_warmup_steps": _INT0,
    # DeepRec
    "max_calls": _INT1, "retrieve_k": _INT1, "max_trajectory_tokens": _INT1, "max_turn_tokens": _INT1,
    "difficulty_top_k": _INT1, "warmstart_gate_rows": _INT1,
    # TRM
    "hidden_size": _INT1, "num_layers": _INT1, "num_heads": _INT1, "ffn_size": _INT1, "num_experts": _INT1,
    "dropout": ("float", (0, True), (1, False)), "preference_prob": ("float", (0, True), (1, True)),
    "preference_variants": _INT1, "preference_word_keep": ("float", (0, False), (1, True)),
}
_SPECIAL = {"max_steps": (-1,)}  # values allowed besides the rule: max_steps -1 = "from the epochs"
NUMERIC_RULES["max_steps"] = _INT1


def _range_text(kind: str, low, high) -> str:
    word = "an integer" if kind == "int" else "a number"
    if low and high:
        return f"{word} in {'[' if low[1] else '('}{low[0]}, {high[0]}{']' if high[1] else ')'}"
    if low:
        return f"{word} {'>=' if low[1] else '>'} {low[0]}"
    return f"{word} {'<=' if high[1] else '<'} {high[0]}"


def _check_value(name: str, value, rule) -> None:
    import math

    kind, low, high = rule
    allowed = _range_text(kind, low, high) + "".join(f" (or {v})" for v in _SPECIAL.get(name, ()))
    if value in _SPECIAL.get(name, ()):
        return
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad and kind == "int" and not float(value).is_integer():
        bad = True
    if not bad and not math.isfinite(value):
        bad = True
    if not bad and low is not None:
        bad = value < low[0] or (value == low[0] and not low[1])
    if not bad and high is not None:
        bad = value > high[0] or (value == high[0] and not high[1])
    if bad:
        raise OptionError(f"--{name} must be {allowed}, got {value!r}")


def validate_options(*parsed, rules: dict | None = None) -> None:
    """Check every field of the parsed dataclasses / namespaces named in ``rules`` (default ``NUMERIC_RULES``)
    whose value is not None; ``OptionError("--<field> must be ..., got ...")`` on the first bad one. A list value
    (``--eval_ks 5 10``) is checked element by element."""
    rules = NUMERIC_RULES if rules is None else rules
    for obj in parsed:
        values = vars(obj) if not hasattr(obj, "__dataclass_fields__") else {
            name: getattr(obj, name, None) for name in obj.__dataclass_fields__}
        for name, rule in rules.items():
            value = values.get(name)
            if value is None:
                continue
            for item in (value if isinstance(value, (list, tuple)) else [value]):
                _check_value(name, item, rule)


def parse_config(parser, argv=None):
    """``parser.parse_args_and_config(argv)`` (a TrlParser) followed by ``validate_options`` on what it parsed;
    TrlParser's and TrainingArguments' own ValueErrors (and an unreadable --config) become ``OptionError``."""
    import yaml

    import argparse

    try:
        parsed = parser.parse_args_and_config(argv)
    except (ValueError, yaml.YAMLError) as err:
        if isinstance(err, OptionError):
            raise
        # a config's own __post_init__ check (TRL's or ours) refused a value: name the option the table's way when
        # the table knows it (the raw values, --config defaults included, as argparse read them)
        if not isinstance(err, yaml.YAMLError):
            raw, _ = argparse.ArgumentParser.parse_known_args(parser, argv)
            validate_options(raw)
        raise OptionError(" ".join(str(err).split())) from err
    validate_options(*parsed)
    return parsed


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
