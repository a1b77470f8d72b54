"""Supervised fine-tuning (the shared first stage; docs/methods.md §1), CleanRL style: one file, top to bottom.

    python train_sft.py --config configs/tiny/sft_ml100k.yaml [--any_field value ...]
    accelerate launch --config_file configs/accelerate/cpu.yaml train_sft.py --config configs/tiny/sft_ml100k.yaml
    python train_sft.py --dataset_path ./processed_datasets/sft_dataset --model_name qwen/Qwen2.5-0.5B-Instruct \
        --num_train_epochs 10 --learning_rate 5e-5 --warmup_ratio 0.05 --per_device_train_batch_size 12 ...

Data: a processed data set (docs/ARCHITECTURE.md). Only `prompt` and `completion` are kept: a conversational
prompt-completion data set, for which TRL's SFTTrainer computes the loss on completion tokens only
(`completion_only_loss`). Each model's own chat template renders the messages.

Length: every example is fitted to `max_length` BEFORE TRL sees it, by cutting the prompt's history, oldest first
(`preprocess.prompting.fit_prompt`: never the instruction or the format example); the completion is never cut (the
docs/methods.md §1.3, SFT truncation bug: right-truncation cut the target list). An example whose completion alone does
not fit is an error naming the sample; prompts that cannot fit without cutting their instruction are counted and
the run stops with an error listing the first ones. TRL's own right-truncation is then a no-op.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from trl import SFTConfig, SFTTrainer, TrlParser

from trainers.checkpointing import KillSafeCheckpointMixin
from cli.args import CommonScriptArguments, OptionError, parse_config
from cli.run import run_script
from cli.run_logging import compose_run_name, configure_wandb, tee_output
from evaluation.predictions import take_subset
from trainers.console import install_compact_console


# ================================================================================================ 1. arguments
@dataclass
class SFTScriptArguments(CommonScriptArguments):
    """SFT's own fields; dataset_path, model_name, max_train_samples / max_eval_samples (seeded random subsets, seed =
    --seed), wandb_project and log_file come from cli.args.CommonScriptArguments (one meaning each)."""

    catalog_path: str | None = field(
        default=None, metadata={"help": "optional catalog.json; only checked against the data set's catalog"})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "optional cap on chat-templated prompt tokens (history cut, oldest first)"})
    mask_tool_results: bool = field(default=False, metadata={
        "help": "DeepRec warm-start data: no loss on the injected TRM item lists (tokenized as the RL rollout "
                "appends them; preprocess.deeprec_data.warmstart_sft_tokens), only on the text the policy writes"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "module names for LoRA (default: all-linear)"})
    # transformers 5 removed TrainingArguments.warmup_ratio (warmup_steps < 1 is now a ratio); kept here so the
    # seed README's `--warmup_ratio 0.05` still works.
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "warm-up as a fraction of the training steps (= warmup_steps in [0, 1))"})


def parse_args(argv=None) -> tuple[SFTScriptArguments, SFTConfig]:
    parser = TrlParser((SFTScriptArguments, SFTConfig))
    if not torch.cuda.is_available():
        # Without these, SFTConfig's post-init (bf16 defaults to True) fails or autocasts to bf16 on CPU.
        # A config file or the command line can still override both.
        parser.set_defaults(use_cpu=True, bf16=False)
    script_args, training_args = parse_config(parser, argv)  # every numeric option range-checked, named
    if not script_args.dataset_path or not script_args.model_name:
        parser.error("--dataset_path and --model_name are required (on the command line or in --config)")
    if script_args.warmup_ratio is not None:
        if not 0 <= script_args.warmup_ratio < 1:
            parser.error(f"--warmup_ratio must be in [0, 1), got {script_args.warmup_ratio}")
        if training_args.warmup_steps not in (0, script_args.warmup_ratio):
            parser.error("give either --warmup_ratio or --warmup_steps, not both")
        training_args.warmup_steps = script_args.warmup_ratio
    if training_args.output_dir in (None, "trainer_output"):
        from modeling.loading import run_name

        training_args.output_dir = os.path.join("results", run_name(script_args.model_name))
    from preprocess.contract import check_output_dir

    check_output_dir(training_args.output_dir)  # before the model or the data load
    if training_args.run_name in (None, training_args.output_dir, "trainer_output"):
        from modeling.loading import run_name

        training_args.run_name = compose_run_name(run_name(script_args.model_name), "sft", training_args.learning_rate,
                                                  lora=script_args.use_lora)
    return script_args, training_args


# ================================================================================================ 2. data
def load_splits(script_args, training_args):
    """(train, eval or None) as datasets with `sample_id`, `prompt`, `completion`."""
    from pathlib import Path

    from datasets import load_from_disk

    from preprocess.contract import DataError

    root = Path(script_args.dataset_path)
    if script_args.catalog_path:
        from preprocess.contract import load_processed

        load_processed(root, script_args.catalog_path)  # raises when the catalog does not match the data set
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{root}/train not found: --dataset_path must be a processed_datasets/<name> folder")
    train = load_from_disk(str(root / "train"))
    for col in ("prompt", "completion"):
        if col not in train.column_names:
            raise DataError(f"{root}/train", field=col, reason=f"missing column (columns: {train.column_names})")
    train, _ = take_subset(train, script_args.max_train_samples, training_args.seed)

    eval_ds = None
    if training_args.eval_strategy != "no":
        if not (root / "validation").is_dir():
            raise FileNotFoundError(f"eval_strategy={training_args.eval_strategy} but {root}/validation is missing; "
                                    "pass --eval_strategy no")
        eval_ds = load_from_disk(str(root / "validation"))
        eval_ds, _ = take_subset(eval_ds, script_args.max_eval_samples, training_args.seed)
    return train, eval_ds


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def fit_to_length(dataset, tokenizer, max_length: int | None, max_prompt_length: int | None = None,
                  split: str = "train", batch_size: int = 256):
    """Cut prompts' history (oldest first, ``preprocess.prompting.fit_prompt``) so that prompt + completion <=
    max_length tokens and prompt <= max_prompt_length; never cut the completion or the instruction. Returns (dataset
    with prompt/completion only, stats). Raises ``PromptFitError`` with the count when some prompts cannot fit
    without cutting their instruction.

    Token counts are those of TRL's SFT tokenisation: the chat-templated prompt with the generation prompt, and the
    chat-templated prompt + completion.
    """
    from preprocess.contract import DataError
    from preprocess.prompting import FitReport, PromptFitError, fit_prompt

    has_id = "sample_id" in dataset.column_names
    stats = {"samples": len(dataset), "truncated": 0, "max_tokens": 0}

    def count(texts):
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def fit_batch(batch, indices):
        prompts, completions = batch["prompt"], batch["completion"]
        p_texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        f_texts = [tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions)]
        p_lens, f_lens = count(p_texts), count(f_texts)
        out_prompts, lengths, errors, removed, cut = [], [], [], [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            name = batch["sample_id"][i] if has_id else f"#{indices[i]}"
            if not (isinstance(completion, list) and len(completion) == 1 and completion[0]["role"] == "assistant"):
                raise DataError(f"{split} split", record=f"sample {name}", field="completion",
                                reason=f"must be one assistant message, got {completion!r}")
            fits_total = max_length is None or f_lens[i] <= max_length
            fits_prompt = max_prompt_length is None or p_lens[i] <= max_prompt_length
            if fits_total and fits_prompt:
                out_prompts.append(prompt)
                lengths.append(f_lens[i])
                errors.append("")
                removed.append(0)
                cut.append(False)
                continue
            p_ids = tokenizer(p_texts[i], add_special_tokens=False)["input_ids"]
            f_ids = tokenizer(f_texts[i], add_special_tokens=False)["input_ids"]
            n_completion = len(f_ids) - _common_prefix(p_ids, f_ids)
            budget = max_prompt_length if max_prompt_length is not None else len(p_ids)
            if max_length is not None:
                if n_completion >= max_length:
                    raise PromptFitError(
                        f"{split} sample {name}: the completion alone has {n_completion} tokens, which does not fit "
                        f"max_length={max_length} with any prompt; the completion is never truncated. Raise "
                        "max_length or drop the sample.")
                budget = min(budget, max_length - n_completion)
            new_prompt, error, n_full, fit = prompt, "", f_lens[i], None
            for _ in range(4):  # a token merge at the prompt/completion boundary can cost a token: retry tighter
                try:
                    fit = fit_prompt(prompt, tokenizer, budget)
                except PromptFitError as err:  # counted; the run stops below with every count
                    error = (f"cannot fit the prompt into {budget} tokens next to a {n_completion}-token completion "
                             f"(max_length={max_length}): {err}")
                    break
                new_prompt = fit.prompt
                n_full = count([tokenizer.apply_chat_template(new_prompt + completion, tokenize=False)])[0]
                if max_length is None or n_full <= max_length:
                    break
                budget -= n_full - max_length
            else:
                raise PromptFitError(f"{split} sample {name}: could not fit max_length={max_length}")
            out_prompts.append(new_prompt if not error else prompt)
            lengths.append(n_full)
            errors.append(f"{name}: {error}" if error else "")
            removed.append(fit.removed if fit is not None and not error and fit.layout != "conversation" else 0)
            cut.append(not error)
        stats["max_tokens"] = max(stats["max_tokens"], max(lengths, default=0))
        return {"prompt": out_prompts, "completion": completions, "n_tokens": lengths, "fit_error": errors,
                "items_removed": removed, "was_cut": cut}

    keep = ["prompt", "completion"]
    dataset = dataset.map(fit_batch, batched=True, batch_size=batch_size, with_indices=True,
                          remove_columns=[c for c in dataset.column_names if c not in keep],
                          desc=f"Fitting {split} prompts to max_length", load_from_cache_file=False)
    # stats from the map callback are lost if datasets runs it in a subprocess; recompute from the column
    stats["max_tokens"] = max(dataset["n_tokens"], default=0)
    fit_errors = [e for e in dataset["fit_error"] if e]
    items_removed = dataset["items_removed"]
    stats["truncated"] = sum(dataset["was_cut"])
    stats["history_items_removed"] = int(sum(items_removed))
    dataset = dataset.remove_columns(["n_tokens", "fit_error", "items_removed", "was_cut"])
    if fit_errors:
        report = FitReport(rows=len(dataset), unfit=len(fit_errors), unfit_examples=fit_errors[:5])
        report.raise_if_unfit(f"{split} split")
    return dataset, stats


def tokenize_masking_tool_results(dataset, tokenizer, max_length: int | None, split: str = "train"):
    """``input_ids`` + ``completion_mask`` (0 on the prompt and on injected TRM lists) of fitted prompt/completion
    rows (``preprocess.deeprec_data.warmstart_sft_tokens``); TRL trains on such a tokenized set as is. Segment-wise
    tokenization can be a few tokens longer than the joint one ``fit_to_length`` counted: such a prompt loses a few
    more history lines. Returns (dataset, stats with the share of completion tokens masked out)."""
    from preprocess.prompting import PromptFitError, fit_prompt, prompt_token_count
    from preprocess.deeprec_data import warmstart_sft_tokens

    def tokenize(row):
        prompt = row["prompt"]
        for _ in range(4):
            out = warmstart_sft_tokens(tokenizer, prompt, row["completion"])
            over = 0 if max_length is None else len(out["input_ids"]) - max_length
            if over <= 0:
                break
            prompt = fit_prompt(prompt, tokenizer, prompt_token_count(prompt, tokenizer) - over).prompt
        else:
            raise PromptFitError(f"{split}: a row does not fit max_length={max_length} after segment-wise "
                                 "tokenization")
        n_prompt = len(tokenizer(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
                                 add_special_tokens=False)["input_ids"])
        completion = out["completion_mask"][n_prompt:]
        return {**out, "n_completion": len(completion), "n_masked": len(completion) - sum(completion)}

    dataset = dataset.map(tokenize, remove_columns=dataset.column_names, desc=f"Tokenizing {split} (tool results "
                          "masked)", load_from_cache_file=False)
    n_completion, n_masked = sum(dataset["n_completion"]), sum(dataset["n_masked"])
    stats = {"completion_tokens": n_completion, "tool_result_tokens_masked": n_masked,
             "masked_share": round(n_masked / n_completion, 4) if n_completion else 0.0,
             "max_tokens": max((len(x) for x in dataset["input_ids"]), default=0)}
    return dataset.remove_columns(["n_completion", "n_masked"]), stats


# ================================================================================================ 3. trainer
class SFTRunTrainer(KillSafeCheckpointMixin, SFTTrainer):
    """TRL's SFTTrainer with kill-safe checkpoints (trainers.checkpointing), like the RL trainers."""


# ================================================================================================ 4-6. main
def main(argv=None):
    script_args, training_args = parse_args(argv)
    with tee_output(script_args.log_file):
        return run(script_args, training_args)


def run(script_args: SFTScriptArguments, training_args: SFTConfig):
    from modeling.loading import check_model_source

    check_model_source(script_args.model_name)  # a missing model: a clear error before the run folder exists
    configure_wandb(training_args.output_dir, script_args.wandb_project)  # offline: wandb files stay in the run
    t_start = time.time()

    # --- model + tokenizer (padding on the right for training; TRL's collator pads right anyway)
    from modeling.loading import check_resume, load_model_and_tokenizer, resolve_resume

    init_kwargs = dict(training_args.model_init_kwargs or {})
    dtype = init_kwargs.pop("dtype", init_kwargs.pop("torch_dtype", "float32"))  # fp32 master weights (TRL default)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)  # verified, up front
    model, tokenizer = load_model_and_tokenizer(script_args.model_name, dtype=dtype, padding_side="right",
                                                trust_remote_code=bool(training_args.trust_remote_code), **init_kwargs)
    if tokenizer.chat_template is None:
        raise OptionError(f"--model_name {script_args.model_name} has no chat template; SFT renders prompts with "
                          "the model's own: pass a chat (instruct) model or add a chat_template to its tokenizer")
    check_resume(resume, model)  # the checkpoint's weights must fit this model (before any data work)

    # --- data: prompt/completion only, prompts cut to fit, completions intact
    train_ds, eval_ds = load_splits(script_args, training_args)
    with training_args.main_process_first(desc="fit prompts to max_length"):
        train_ds, train_stats = fit_to_length(train_ds, tokenizer, training_args.max_length,
                                              script_args.max_prompt_length, "train")
        eval_stats = None
        if eval_ds is not None:
            eval_ds, eval_stats = fit_to_length(eval_ds, tokenizer, training_args.max_length,
                                                script_args.max_prompt_length, "validation")
        if script_args.mask_tool_results:
            train_ds, train_stats["tool_mask"] = tokenize_masking_tool_results(
                train_ds, tokenizer, training_args.max_length, "train")
            if eval_ds is not None:
                eval_ds, eval_stats["tool_mask"] = tokenize_masking_tool_results(
                    eval_ds, tokenizer, training_args.max_length, "validation")
    print(f"[sft] train: {train_stats}" + (f" | validation: {eval_stats}" if eval_stats else ""), flush=True)
    training_args.completion_only_loss = True  # the contract's prompt/completion data: loss on completions only

    # --- optional LoRA
    peft_config = None
    if script_args.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=script_args.lora_r, lora_alpha=script_args.lora_alpha,
                                 lora_dropout=script_args.lora_dropout, task_type="CAUSAL_LM",
                                 target_modules=script_args.lora_target_modules or "all-linear")

    # --- trainer
    trainer = SFTRunTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tokenizer, peft_config=peft_config)
    install_compact_console(trainer)  # one short console line per log; the full dict goes to the logs

    # --- train
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    # --- save the final model + tokenizer (+ the script arguments) to output_dir
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
        with open(os.path.join(training_args.output_dir, "sft_script_args.json"), "w") as fh:
            json.dump({**asdict(script_args), "train_fit": train_stats, "eval_fit": eval_stats}, fh, indent=2)
        print(f"[sft] saved to {training_args.output_dir} ({time.time() - t_start:.0f}s)", flush=True)
    return trainer


if __name__ == "__main__":
    raise SystemExit(run_script(main))
