"""What every RL training script (train_rank_grpo.py, train_recpo.py, train_deeprec.py) does around its trainer:
check the generation settings before anything loads (`check_generation_settings`, `unknown_deepspeed_config_keys`),
start the run (`start_rl_run`) and train, resuming when asked, then save (`train_and_save`)."""
from __future__ import annotations

from cli.args import OptionError
from cli.run_logging import CurrentStderrHandler

VLLM_MODES = ("colocate", "server")  # TRL 1.16's VLLMGeneration accepts these two (and checks only after loading)


def check_generation_settings(config, world_size: int | None = None) -> None:
    """The generation fields of an RL config, checked before anything loads (TRL checks the first two only once the
    model is loaded, the third never). ``world_size``: the number of training processes (default: WORLD_SIZE, which
    ``accelerate launch`` sets; 1 for a plain ``python`` run).

    * ``vllm_mode`` is ``colocate`` or ``server``;
    * with colocated vLLM, ``vllm_tensor_parallel_size`` divides the process count (each group of that many
      processes shares one engine);
    * on the transformers path (``use_vllm`` false, also after the CPU fallback) ``generation_kwargs`` holds only
      fields of transformers' GenerationConfig: vLLM sampling parameters such as ``stop`` would be ignored silently
      there (RecPO would then generate its whole ``max_completion_length``).
    """
    import os

    mode = getattr(config, "vllm_mode", "colocate")
    if mode not in VLLM_MODES:
        raise OptionError(f"vllm_mode must be one of {', '.join(VLLM_MODES)}, got {mode!r}")
    use_vllm = bool(getattr(config, "use_vllm", False))
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    tp = int(getattr(config, "vllm_tensor_parallel_size", 1) or 1)
    if use_vllm and mode == "colocate" and (tp < 1 or world % tp):
        raise OptionError(f"vllm_tensor_parallel_size {tp} does not divide the {world} training process"
                         f"{'es' if world != 1 else ''}: with vllm_mode colocate every group of {tp} processes "
                         f"shares one vLLM engine. Set --vllm_tensor_parallel_size to a divisor of {world} "
                         "(1: an engine per process), or change --num_processes")
    kwargs = getattr(config, "generation_kwargs", None) or {}
    if kwargs and use_vllm:
        try:
            from vllm import SamplingParams
        except ImportError:  # a CPU machine (parsing a GPU config): tests/test_configs.py lints against vLLM 0.31.0
            SamplingParams = None
        fields = set(getattr(SamplingParams, "__struct_fields__", ()) or ())
        unknown = sorted(set(kwargs) - fields) if fields else []
        if unknown:
            raise OptionError(f"generation_kwargs {unknown}: not sampling parameters of the installed vLLM "
                             "(vllm.SamplingParams), which TRL builds from generation_kwargs when use_vllm is true")
    if kwargs and not use_vllm:
        from transformers import GenerationConfig

        unknown = sorted(set(kwargs) - set(GenerationConfig().to_dict()))
        if unknown:
            raise OptionError(f"generation_kwargs {unknown}: not fields of transformers' GenerationConfig, so the "
                             "transformers generation path (use_vllm false) would ignore them silently (vLLM "
                             "sampling parameters such as `stop` apply only with use_vllm true). Remove them "
                             "(e.g. --generation_kwargs '{}') or generate with vLLM on a GPU")


def unknown_deepspeed_config_keys(keys) -> list[str]:
    """The keys of an accelerate config's ``deepspeed_config`` that ``accelerate launch`` does not read: it copies
    every key onto its arguments by name, so a misspelt one (``zero3_save_16bit_modle``) is ignored without a word.
    The keys it reads are its own DeepSpeed arguments."""
    from accelerate.commands.launch import launch_command_parser

    group = next(g for g in launch_command_parser()._action_groups if g.title == "DeepSpeed Arguments")
    known = {action.dest for action in group._group_actions}
    return sorted(str(k) for k in keys if k not in known)


def start_rl_run(script_args, config, logger) -> None:
    """What every RL script does first: INFO logging (re-configured when output is tee'd to --log_file); on a
    machine without CUDA, ``use_vllm`` switched off with a warning (generation falls back to transformers); then
    `check_generation_settings`, and the accelerate config's deepspeed_config keys (``accelerate launch`` passes
    their names in ACCELERATE_CONFIG_DS_FIELDS) checked by `unknown_deepspeed_config_keys`."""
    import logging
    import os

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=bool(getattr(script_args, "log_file", None)), handlers=[CurrentStderrHandler()])
    if getattr(config, "use_vllm", False) and not torch.cuda.is_available():
        logger.warning("--use_vllm needs a GPU; no CUDA device here, generating with transformers instead")
        config.use_vllm = False
    check_generation_settings(config)
    ds_fields = [f for f in os.environ.get("ACCELERATE_CONFIG_DS_FIELDS", "").split(",") if f]
    unknown = unknown_deepspeed_config_keys(set(ds_fields) - {"mixed_precision"})  # launch adds mixed_precision
    if unknown:
        raise ValueError(f"the accelerate config's deepspeed_config has keys accelerate launch does not read "
                         f"(ignored silently): {unknown}; see `accelerate launch --help`, DeepSpeed Arguments")


def train_and_save(trainer, config, tokenizer, logger):
    """Train (resuming from ``--resume_from_checkpoint last|true|PATH``), save the final model and tokenizer into
    ``config.output_dir``; returns the trainer. The resume checkpoint is verified first (files, and weights that
    fit the model being trained: ``modeling.loading.check_resume``)."""
    from modeling.loading import check_resume, resolve_resume

    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir)
    check_resume(resume, trainer.model)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(config.output_dir)
    logger.info("saved to %s", config.output_dir)
    return trainer
