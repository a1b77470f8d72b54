"""Config lint: every YAML under configs/ is checked against the code that reads it.

* Every method YAML (configs/*.yaml, configs/tiny/*.yaml) parses through its OWN script's parser (``parse_args`` of
  train_sft.py / train_rank_grpo.py / train_recpo.py / train_deeprec.py / train_trm.py, i.e. TrlParser over the
  script's dataclasses, unknown keys rejected); a YAML that no script claims is a failure.
* Every GPU RL method config keeps TRL's ``use_vllm: true`` and ``vllm_mode: colocate``, unless the line that changes
  it carries a comment saying why.
* Batch arithmetic: per-device x accumulation x processes (processes from the ``accelerate launch --config_file``
  line the YAML documents, ``--num_processes`` included; 1 for CPU configs) is a whole number of prompt groups of G,
  and equals the papers' numbers (docs/methods.md): Rank-GRPO 384 = 48 prompts x 8; R²ec 4 users/device x 3 processes x
  G 4; DeepRec 128 prompts x 8; SFT 12 x grad-acc 8.
* Every accelerate YAML (configs/accelerate/) loads with accelerate's own reader and names a valid distributed_type,
  with consistent process counts, DeepSpeed stages and multi-node fields; every key nested under
  ``deepspeed_config`` is one ``accelerate launch`` reads (it copies them by name: a misspelt key is ignored).
* Generation fields, parsed WITH vLLM on (its fields parse without the package) and put through the scripts' own
  start-up check (``cli.training.check_generation_settings``) at the documented process count: ``vllm_mode``
  is colocate or server, colocated ``vllm_tensor_parallel_size`` divides the processes, ``generation_kwargs`` of a
  vLLM config are vLLM 0.31.0 sampling parameters, and a config on the transformers path has none of the vLLM-only
  ones (``stop``) that transformers would ignore silently.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

CONFIGS = REPO / "configs"
ACCEL = CONFIGS / "accelerate"
METHOD_YAMLS = sorted(p for p in CONFIGS.rglob("*.yaml") if ACCEL not in p.parents)
ACCEL_YAMLS = sorted(ACCEL.glob("*.yaml"))
# parse GPU files on a CPU machine: these only switch the device, never a method or batch field
CPU_OVERRIDES = ["--use_cpu", "true", "--bf16", "false"]

# The papers' effective batches (docs/methods.md), keyed by config: (completions per optimizer step, G or None for SFT).
PAPER_BATCHES = {
    "rank_grpo_qwen25_0.5b.yaml": (384, 8),   # Rank-GRPO: 48 prompts x 8
    "rank_grpo_llama32_3b.yaml": (384, 8),
    "recpo_gemma2_2b.yaml": (4 * 3 * 4, 4),   # R²ec: 4 users/device x 3 processes x G 4
    "recpo_qwen25_3b.yaml": (4 * 3 * 4, 4),
    "deeprec_qwen25_7b_stage1.yaml": (128 * 8, 8),  # DeepRec: 128 prompts x 8 samples
    "deeprec_qwen25_7b_stage2.yaml": (128 * 8, 8),
    "sft_qwen25_0.5b.yaml": (12 * 8, None),   # SFT: batch 12 x grad-acc 8 (one GPU)
}


def script_for(path) -> str:
    """The training script that reads this YAML (by file name; the DeepRec warm-start SFT is an SFT config)."""
    name = path.name
    if name.startswith("sft_") or name.endswith("_sft.yaml"):
        return "train_sft"
    for prefix, script in (("rank_grpo_", "train_rank_grpo"), ("recpo_", "train_recpo"),
                           ("deeprec_", "train_deeprec"), ("trm_", "train_trm")):
        if name.startswith(prefix):
            return script
    raise AssertionError(f"{path.relative_to(REPO)}: no training script claims this YAML (name it sft_*, "
                         "rank_grpo_*, recpo_*, deeprec_*, trm_* or *_sft)")


def parse(path, *extra):
    """The script's own parse_args on ``--config path`` (+ CPU overrides for files that select a GPU)."""
    import importlib

    script = importlib.import_module(script_for(path))
    if script_for(path) == "train_trm":
        return script.parse_args(["--config", str(path), *extra])
    raw = yaml.safe_load(path.read_text())
    overrides = [] if raw.get("use_cpu") else list(CPU_OVERRIDES)
    # use_vllm stays as the YAML says: vLLM's fields parse without the package (the CPU fallback is start-up's)
    return script.parse_args(["--config", str(path), *overrides, *extra])


def is_gpu_config(path) -> bool:
    return "tiny" not in path.parts and not yaml.safe_load(path.read_text()).get("use_cpu", False)


def launch_processes(path) -> tuple[str | None, int]:
    """(accelerate config, number of processes) of the launch line a YAML documents in its comments; a CPU config
    without one runs as one process."""
    text = path.read_text()
    m = re.search(r"--config_file\s+(configs/accelerate/\S+\.yaml)((?:\s+--\w+(?:\s+[^-\s]\S*)?)*?)\s+train_\w+\.py",
                  text.replace("\\\n#", " "))
    if m is None:
        assert not is_gpu_config(path), f"{path.relative_to(REPO)}: a GPU config must document its `accelerate " \
                                        "launch --config_file configs/accelerate/X.yaml ...` line"
        return None, 1
    accel = REPO / m.group(1)
    assert accel.is_file(), f"{path.relative_to(REPO)}: documents {m.group(1)}, which does not exist"
    n = yaml.safe_load(accel.read_text())["num_processes"]
    override = re.search(r"--num_processes\s+(\d+)", m.group(2))
    return m.group(1), int(override.group(1)) if override else int(n)


# ---------------------------------------------------------------------------------------------- method YAMLs
def test_every_config_folder_yaml_is_linted():
    names = {p.relative_to(CONFIGS).as_posix() for p in METHOD_YAMLS}
    assert {"sft_qwen25_0.5b.yaml", "rank_grpo_qwen25_0.5b.yaml", "recpo_qwen25_3b.yaml",
            "deeprec_qwen25_7b_stage1.yaml", "tiny/trm_ml100k.yaml", "tiny/sft_ml100k.yaml"} <= names
    assert set(PAPER_BATCHES) <= names, set(PAPER_BATCHES) - names
    assert {script_for(p) for p in METHOD_YAMLS} == {"train_sft", "train_rank_grpo", "train_recpo", "train_deeprec",
                                                    "train_trm"}


@pytest.mark.parametrize("path", METHOD_YAMLS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_config_parses_into_its_scripts_dataclasses(path):
    parsed = parse(path)
    raw = yaml.safe_load(path.read_text())
    objs = parsed if isinstance(parsed, tuple) else (parsed,)
    # every key of the YAML landed in one of the script's dataclasses with the YAML's value (no silent rename)
    for key, value in raw.items():
        if key in ("use_cpu", "bf16"):
            continue  # overridden above for CPU parsing
        holders = [o for o in objs if hasattr(o, key)]
        assert holders, f"{path.relative_to(REPO)}: key {key!r} is in no dataclass of {script_for(path)}.py"
        got = getattr(holders[0], key)
        got = getattr(got, "value", got)  # enums (lr_scheduler_type, save_strategy, ...)
        if key == "output_dir" or value is None:
            continue
        if isinstance(value, float) and isinstance(got, (int, float)):
            assert got == pytest.approx(value), (path.name, key, got, value)
        elif key not in ("sft_checkpoint",):  # resolved later by the script
            if isinstance(got, list) and not isinstance(value, list):
                value = [] if value == "none" else [value]  # report_to: wandb -> ["wandb"], none -> []
            assert got == value or str(got) == str(value), (path.name, key, got, value)


def test_a_config_with_an_unknown_key_is_refused(tmp_path):
    """The lint above could fail: a typo'd key is an error of the script's parser, naming the key."""
    bad = tmp_path / "rank_grpo_typo.yaml"
    bad.write_text((CONFIGS / "tiny" / "rank_grpo_ml100k.yaml").read_text() + "\nnum_generation: 8\n")
    with pytest.raises((ValueError, SystemExit)) as err:
        parse(bad)
    assert err.type is SystemExit or "num_generation" in str(err.value)


@pytest.mark.parametrize("path", [p for p in METHOD_YAMLS if is_gpu_config(p) and script_for(p) != "train_sft"
                                  and script_for(p) != "train_trm"], ids=lambda p: p.name)
def test_gpu_rl_configs_keep_colocated_vllm_unless_they_say_why(path):
    raw = yaml.safe_load(path.read_text())
    lines = {m.group(1): m.group(0) for m in re.finditer(r"(?m)^(use_vllm|vllm_mode):.*$", path.read_text())}
    for key, want in (("use_vllm", True), ("vllm_mode", "colocate")):
        if raw.get(key) != want:
            line = lines.get(key, "")
            assert "#" in line and len(line.split("#", 1)[1].split()) >= 3, \
                f"{path.name}: {key} is {raw.get(key)!r}, not {want!r}, and its line has no comment saying why"


@pytest.mark.parametrize("path", [p for p in METHOD_YAMLS if script_for(p) != "train_trm"], ids=lambda p: p.name)
def test_batch_arithmetic(path):
    parsed = parse(path)
    config = parsed[1]
    accel, processes = launch_processes(path)
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * processes
    G = getattr(config, "num_generations", None)
    if script_for(path) != "train_sft":
        assert per_step % G == 0, f"{path.name}: {config.per_device_train_batch_size} x " \
                                  f"{config.gradient_accumulation_steps} x {processes} = {per_step} completions a " \
                                  f"step is not a whole number of groups of G = {G}"
        # TRL generates per_device x processes x steps_per_generation at once: whole groups too
        assert config.per_device_train_batch_size * processes * config.steps_per_generation % G == 0, path.name
    if path.name in PAPER_BATCHES:
        want, want_G = PAPER_BATCHES[path.name]
        assert per_step == want, f"{path.name}: {per_step} completions a step ({accel}, {processes} processes), " \
                                 f"the paper's is {want}"
        assert G == want_G or want_G is None, (path.name, G, want_G)


@pytest.mark.parametrize("path", [p for p in METHOD_YAMLS if script_for(p) not in ("train_sft", "train_trm")],
                         ids=lambda p: p.name)
def test_colocated_vllm_tensor_parallel_size_divides_the_process_counts(path):
    """TRL's colocated vLLM needs vllm_tensor_parallel_size to divide the process count: on the YAML's documented
    launch line, and on every count docs/scaling.md's "fewer GPUs" advice implies (1, 2, 3 and 8 processes)."""
    from cli.training import check_generation_settings

    _, config = parse(path)
    for processes in sorted({launch_processes(path)[1], 1, 2, 3, 8}):
        check_generation_settings(config, world_size=processes)  # TRL would refuse to start (after loading)


# vLLM 0.31.0's SamplingParams fields (vllm/sampling_params.py of the vllm-0.31.0 wheel, class SamplingParams; the
# public ones): what TRL's vLLM path accepts in generation_kwargs. vLLM is not installed on a CPU machine.
VLLM_SAMPLING_FIELDS = {
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "watermarking", "top_p",
    "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
    "prompt_logprobs", "prompt_logprob_token_ids", "prompt_logprob_start", "logprob_token_ids", "flat_logprobs",
    "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
    "output_kind", "stream_interval", "skip_clone", "output_text_buffer_length", "structured_outputs", "logit_bias",
    "allowed_token_ids", "extra_args", "bad_words", "skip_reading_prefix_cache", "thinking_token_budget",
    "repetition_detection", "routed_experts_prompt_start", "trace_decode_token_ids"}
RL_YAMLS = [p for p in METHOD_YAMLS if script_for(p) not in ("train_sft", "train_trm")]


def lint_generation(config, processes: int) -> list[str]:
    """The problems of an RL config's generation fields at ``processes`` training processes: the scripts' own
    start-up check, then generation_kwargs of a vLLM config against vLLM 0.31.0's sampling parameters."""
    from cli.training import check_generation_settings

    problems = []
    try:
        check_generation_settings(config, world_size=processes)
    except ValueError as err:
        problems.append(str(err))
    if config.use_vllm:
        unknown = sorted(set(config.generation_kwargs or {}) - VLLM_SAMPLING_FIELDS)
        if unknown:
            problems.append(f"generation_kwargs {unknown}: not vLLM 0.31.0 sampling parameters")
    return problems


@pytest.mark.parametrize("path", RL_YAMLS, ids=lambda p: p.name)
def test_generation_settings_pass_the_start_up_check_with_vllm_on(path):
    raw = yaml.safe_load(path.read_text())
    _, config = parse(path)
    assert config.use_vllm == bool(raw.get("use_vllm", False)), f"{path.name}: parsed with vLLM as the YAML says"
    problems = lint_generation(config, launch_processes(path)[1])
    assert problems == [], f"{path.relative_to(REPO)}: {problems}"
    if config.use_vllm and config.generation_kwargs:
        # vLLM-only keys are fine here, and the transformers path (the CPU fallback, --use_vllm false) refuses them
        from transformers import GenerationConfig

        vllm_only = set(config.generation_kwargs) - set(GenerationConfig().to_dict())
        if vllm_only:
            config.use_vllm = False
            assert any("transformers generation path" in p for p in lint_generation(config, 1)), path.name


def _bad_config(tmp_path, base: str, extra: str):
    bad = tmp_path / Path(base).name
    bad.write_text((CONFIGS / base).read_text() + "\n" + extra + "\n")
    return bad


@pytest.mark.parametrize("base, extra, want", [
    ("tiny/recpo_ml100k.yaml", "generation_kwargs:\n  stop: ['<answer>']",
     "generation_kwargs ['stop']: not fields of transformers' GenerationConfig"),
    ("tiny/rank_grpo_ml100k.yaml", "vllm_mode: colocated", "vllm_mode must be one of colocate, server, got 'colocated'"),
    ("tiny/deeprec_ml100k_stage1.yaml", "vllm_mode: Server", "got 'Server'"),
    ("rank_grpo_qwen25_0.5b.yaml", "vllm_tensor_parallel_size: 3", "vllm_tensor_parallel_size 3 does not divide the 4"),
    ("recpo_qwen25_3b.yaml", "vllm_tensor_parallel_size: 2", "vllm_tensor_parallel_size 2 does not divide the 3"),
    ("recpo_qwen25_3b.yaml", "generation_kwargs:\n  stop: ['<answer>']\n  num_beams: 2",
     "generation_kwargs ['num_beams']: not vLLM 0.31.0 sampling parameters"),
], ids=["stop-on-hf-path", "vllm_mode-typo", "vllm_mode-case", "tp-3-of-4", "tp-2-of-3", "hf-only-key-on-vllm"])
def test_the_generation_lint_fails_on_a_bad_config(tmp_path, base, extra, want):
    """Each check above can fail: the YAML with one bad line appended (a later key wins in YAML)."""
    path = _bad_config(tmp_path, base, extra)
    documented = launch_processes(CONFIGS / base)[1]
    _, config = parse(path)
    problems = lint_generation(config, documented)
    assert any(want in p for p in problems), problems


def test_batch_arithmetic_of_the_paper_setups_in_detail():
    """The three RL setups spelled out: prompts per step x G."""
    for name, prompts, G, processes in (("rank_grpo_qwen25_0.5b.yaml", 48, 8, 4), ("recpo_qwen25_3b.yaml", 12, 4, 3),
                                        ("deeprec_qwen25_7b_stage1.yaml", 128, 8, 8)):
        path = CONFIGS / name
        _, config = parse(path)
        assert launch_processes(path)[1] == processes, name
        assert config.num_generations == G, name
        per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * processes
        assert per_step // G == prompts, (name, per_step, G)
    _, recpo = parse(CONFIGS / "recpo_qwen25_3b.yaml")
    assert recpo.per_device_train_batch_size == 4 * recpo.num_generations  # 4 users a device


# ---------------------------------------------------------------------------------------------- accelerate YAMLs
@pytest.mark.parametrize("path", ACCEL_YAMLS, ids=lambda p: p.name)
def test_accelerate_config_parses_and_names_a_valid_distributed_type(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    raw = yaml.safe_load(path.read_text())
    assert raw["distributed_type"] in {t.value for t in DistributedType}, (path.name, raw["distributed_type"])
    cfg = load_config_from_file(str(path))  # accelerate's own reader (what `accelerate launch` uses)
    assert cfg.distributed_type == DistributedType(raw["distributed_type"])
    assert cfg.num_processes >= 1 and cfg.num_machines >= 1 and cfg.num_processes % cfg.num_machines == 0
    assert cfg.mixed_precision in ("no", "fp16", "bf16")
    if cfg.distributed_type == DistributedType.NO:
        assert cfg.num_processes == 1, f"{path.name}: distributed_type NO runs ONE process"
    if cfg.distributed_type == DistributedType.DEEPSPEED:
        ds = cfg.deepspeed_config
        assert ds["zero_stage"] in (0, 1, 2, 3), path.name
        assert ds["zero3_init_flag"] == (ds["zero_stage"] == 3), f"{path.name}: zero3_init_flag only with ZeRO-3"
        for key in ("offload_optimizer_device", "offload_param_device"):
            assert ds[key] in ("none", "cpu", "nvme"), (path.name, key)
        if ds["offload_param_device"] != "none":
            assert ds["zero_stage"] == 3, f"{path.name}: parameter offload needs ZeRO-3"
    if raw.get("use_cpu"):
        assert cfg.mixed_precision == "no", f"{path.name}: CPU runs are fp32"
    if cfg.num_machines > 1:
        assert raw.get("main_process_ip") and raw.get("main_process_port"), f"{path.name}: multi-node needs " \
                                                                           "main_process_ip / main_process_port"
        assert raw.get("rdzv_backend") == "static" and raw.get("machine_rank") == 0


def deepspeed_key_problems(path) -> list[str]:
    from cli.training import unknown_deepspeed_config_keys

    nested = yaml.safe_load(Path(path).read_text()).get("deepspeed_config") or {}
    unknown = unknown_deepspeed_config_keys(nested)
    return [f"{Path(path).name}: deepspeed_config key {k!r} is not read by accelerate launch" for k in unknown]


@pytest.mark.parametrize("path", ACCEL_YAMLS, ids=lambda p: p.name)
def test_nested_deepspeed_config_keys_are_read_by_accelerate_launch(path):
    assert deepspeed_key_problems(path) == []


def test_a_misspelt_nested_deepspeed_key_is_caught(tmp_path):
    """accelerate's own reader takes the misspelt key without a word (the lint above is what catches it)."""
    from accelerate.commands.config.config_args import load_config_from_file

    bad = tmp_path / "zero3_typo.yaml"
    bad.write_text((ACCEL / "zero3.yaml").read_text().replace("zero3_save_16bit_model", "zero3_save_16bit_modle"))
    assert load_config_from_file(str(bad)).deepspeed_config["zero3_save_16bit_modle"] is True
    assert deepspeed_key_problems(bad) == ["zero3_typo.yaml: deepspeed_config key 'zero3_save_16bit_modle' is not "
                                           "read by accelerate launch"]


def test_the_documented_setups_exist():
    """The configs docs/scaling.md's "Launch configs" table names, with their process counts."""
    want = {"zero2.yaml": ("DEEPSPEED", 2, 3), "zero3.yaml": ("DEEPSPEED", 3, 4),
            "zero3_offload.yaml": ("DEEPSPEED", 3, 4), "multinode_2x4.yaml": ("DEEPSPEED", 3, 8),
            "single_gpu.yaml": ("NO", None, 1), "cpu.yaml": ("NO", None, 1), "cpu_2proc.yaml": ("MULTI_GPU", None, 2),
            "cpu_2proc_zero2.yaml": ("DEEPSPEED", 2, 2), "cpu_2proc_zero3.yaml": ("DEEPSPEED", 3, 2),
            "cpu_2proc_zero3_offload.yaml": ("DEEPSPEED", 3, 2)}
    for name, (kind, stage, n) in want.items():
        raw = yaml.safe_load((ACCEL / name).read_text())
        assert raw["distributed_type"] == kind and raw["num_processes"] == n, name
        if stage is not None:
            assert raw["deepspeed_config"]["zero_stage"] == stage, name
    multinode = yaml.safe_load((ACCEL / "multinode_2x4.yaml").read_text())
    assert multinode["num_machines"] == 2 and multinode["num_processes"] == 8
    # `--cpu --num_processes 2` silently runs one process; the 2-process CPU config is a MULTI_GPU (gloo) one
    assert yaml.safe_load((ACCEL / "cpu_2proc.yaml").read_text()).get("use_cpu") in (None, False)


# ------------------------------------------------------------------------------------ docs/scaling.md launch lines
def _scaling_doc_launch_lines() -> list[str]:
    section = (REPO / "docs" / "scaling.md").read_text()  # the whole page is about running at scale
    joined = re.sub(r"\\\n\s*", " ", section)  # shell line continuations
    return [ln.split("#", 1)[0].strip() for ln in joined.splitlines()
            if re.search(r"(accelerate launch|^python) .*train_\w+\.py", ln.split("#", 1)[0].strip())]


def test_scaling_doc_launch_lines_parse_and_keep_the_batch():
    """Every `accelerate launch ... train_X.py ARGS` line of docs/scaling.md (running at scale): the accelerate
    config exists, the script's parser accepts ARGS, and an RL line's completions per step are whole groups of G
    (and 384 for Rank-GRPO, 1024 or the documented 768 for DeepRec)."""
    import importlib
    import shlex

    lines = _scaling_doc_launch_lines()
    assert len(lines) >= 9, lines
    seen_scripts = set()
    for line in lines:
        words = shlex.split(line.replace("&", ""))
        words = [w for w in words if not w.startswith("CUDA_VISIBLE_DEVICES=")]
        i = next(k for k, w in enumerate(words) if re.fullmatch(r"train_\w+\.py", w))
        launcher, script, args = words[:i], words[i][:-3], words[i + 1:]
        seen_scripts.add(script)
        processes = 1
        if "--config_file" in launcher:
            accel = REPO / launcher[launcher.index("--config_file") + 1]
            assert accel.is_file(), line
            processes = int(yaml.safe_load(accel.read_text())["num_processes"])
        if "--num_processes" in launcher:
            processes = int(launcher[launcher.index("--num_processes") + 1])
        mod = importlib.import_module(script)
        if script == "train_trm":
            mod.parse_args(args)
            continue
        parsed = mod.parse_args([*args, *CPU_OVERRIDES])  # vLLM stays on: its fields parse without vLLM installed
        config = parsed[1]
        per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * processes
        if script != "train_sft":
            assert per_step % config.num_generations == 0, (line, per_step)
        if script == "train_rank_grpo":
            assert per_step == 384, (line, per_step)
        if script == "train_deeprec":
            assert per_step in (1024, 768), (line, per_step)
        if script == "train_recpo":
            assert per_step == 48, (line, per_step)
        if script != "train_sft":
            assert lint_generation(config, processes) == [], line
    assert seen_scripts == {"train_sft", "train_rank_grpo", "train_recpo", "train_deeprec", "train_trm"}


# ---------------------------------------------------------------------------------------------- start-up checks
def test_start_up_check_reads_the_process_count_accelerate_sets(monkeypatch):
    from cli.training import check_generation_settings

    _, config = parse(CONFIGS / "rank_grpo_qwen25_0.5b.yaml", "--vllm_tensor_parallel_size", "4")
    monkeypatch.setenv("WORLD_SIZE", "4")
    check_generation_settings(config)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size 4 does not divide the 2 training processes"):
        check_generation_settings(config)
    config.vllm_mode = "server"  # the server has its own --tensor_parallel_size
    check_generation_settings(config)


def test_start_up_refuses_vllm_only_generation_kwargs_after_the_cpu_fallback(monkeypatch, caplog):
    import logging

    import torch

    from cli.training import start_rl_run

    script_args, config = parse(CONFIGS / "recpo_qwen25_3b.yaml")
    assert config.use_vllm and config.generation_kwargs["stop"] == ["<answer>"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"generation_kwargs \['include_stop_str_in_output', 'stop'\]"):
        start_rl_run(script_args, config, logging.getLogger("test"))
    assert config.use_vllm is False  # the fallback ran first, then the check saw the transformers path
    # the override the message names gets through
    script_args, config = parse(CONFIGS / "recpo_qwen25_3b.yaml", "--generation_kwargs", "{}")
    start_rl_run(script_args, config, logging.getLogger("test"))


def test_start_up_refuses_a_misspelt_deepspeed_key_accelerate_passed_on(monkeypatch):
    import logging

    from cli.training import start_rl_run

    script_args, config = parse(CONFIGS / "tiny" / "rank_grpo_ml100k.yaml")
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", "deepspeed_multinode_launcher,offload_optimizer_device,"
                       "offload_param_device,zero3_init_flag,zero3_save_16bit_model,zero_stage,mixed_precision")
    start_rl_run(script_args, config, logging.getLogger("test"))
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", "zero3_init_flag,zero3_save_16bit_modle,zero_stage")
    with pytest.raises(ValueError, match=r"accelerate launch does not read \(ignored silently\): "
                                         r"\['zero3_save_16bit_modle'\]"):
        start_rl_run(script_args, config, logging.getLogger("test"))


def test_a_script_refuses_a_bad_vllm_mode_before_loading_anything(tmp_path):
    """The real script: the error is the vllm_mode one although the model folder does not even exist."""
    import subprocess
    import sys

    cmd = [sys.executable, str(REPO / "train_rank_grpo.py"), "--config", str(CONFIGS / "tiny" / "rank_grpo_ml100k.yaml"),
           "--model_name", str(tmp_path / "no_model"), "--output_dir", str(tmp_path / "out"), "--vllm_mode", "colocated",
           "--report_to", "none"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert "vllm_mode must be one of colocate, server, got 'colocated'" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
