"""Loading models, tokenizers and checkpoints the same way in every script.

    model, tok = load_model_and_tokenizer("models/tiny-ml100k")                 # local dir or HF id
    path = resolve_checkpoint("results/tiny-ml100k-sft", step=200)              # results/.../checkpoint-200
    run_name("Qwen/Qwen2.5-0.5B-Instruct") -> "Qwen/Qwen2.5-0.5B-Instruct";  run_name("models/tiny") -> "tiny"

`trust_remote_code` is False unless the caller asks for it. A folder holding a LoRA adapter (adapter_config.json,
as saved by SFT with --use_lora) loads as base model + adapter, merged by default.

A load that would leave weights missing (randomly initialised), unexpected (dropped) or of the wrong shape is
refused with ``CheckpointError`` naming the folder and a few keys -- e.g. a config.json naming another model_type,
which transformers would otherwise load as a random model. ``check_weights_load`` runs the same check on the meta
device (no tensor is read) for the scripts that hand a path to TRL.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

from modeling.checkpoint_integrity import CheckpointError, checkpoint_problem, verify_checkpoint, weights_problem

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._+=-]+")


def _torch_dtype(dtype):
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    name = aliases.get(str(dtype), str(dtype))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return value


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _looks_local(text: str) -> bool:
    """A name that can only mean a local folder: a path form (absolute, ./, ../, ~, a backslash, a trailing
    slash, more than one '/'), or 'a/b' whose first part is a local folder (models/nope: the user meant models/)."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.endswith("/") or text.count("/") > 1:
        return True
    return "/" in text and Path(text.split("/", 1)[0]).is_dir()


_MODEL_FILES = ("config.json", "adapter_config.json")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")


def check_model_source(name: str | os.PathLike, *, check_hub_cache: bool = True, tokenizer: bool = False) -> str:
    """``name`` when it can be loaded as a model, else FileNotFoundError naming it -- BEFORE anything is written.

    * an existing folder must hold ``config.json`` or ``adapter_config.json`` (``tokenizer=True``: a tokenizer
      file); an existing file is refused;
    * a name that can only be a local path (``_looks_local``: models/nope, ./x, /abs/x) must exist;
    * a hub id (``org/name`` or ``name``) under ``HF_HUB_OFFLINE=1`` must be in the local hub cache
      (``check_hub_cache``): otherwise transformers fails later with a connection error that names neither the
      model nor the setting. Online, a hub id is left to the hub.
    """
    text = str(name)
    if not text.strip():
        raise FileNotFoundError("model name/path is empty")
    path = Path(text).expanduser()
    files = _TOKENIZER_FILES if tokenizer else _MODEL_FILES
    if path.is_dir():
        if not any((path / f).is_file() for f in files):
            steps = list_checkpoints(path)
            hint = (f"; it holds checkpoints ({', '.join(f'checkpoint-{s}' for s in steps[-3:])}): pass one of them"
                    if steps else "")
            raise FileNotFoundError(f"model folder {text} holds none of {', '.join(files)}{hint}")
        return text
    if path.exists():
        raise FileNotFoundError(f"model path {text} is a file; expected a model folder (config.json) or a hub id")
    if _looks_local(text):
        raise FileNotFoundError(f"model folder not found: {text} (resolved to {path.resolve()}); check the path "
                                f"(it is not a hub id either)")
    if check_hub_cache and _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = any(isinstance(try_to_load_from_cache(text, f), str) for f in files)
        if not cached:
            raise FileNotFoundError(f"model folder not found: {text} (resolved to {path.resolve()}), and as a hub id "
                                    f"it is not in the local hub cache (HF_HOME / HF_HUB_CACHE) with HF_HUB_OFFLINE=1; "
                                    f"pass a local model folder or download it first")
    return text


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file()


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False, padding_side: str = "left"):
    """AutoTokenizer with a pad token (falls back to eos) and the requested padding side."""
    from transformers import AutoTokenizer

    check_model_source(path, tokenizer=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer at {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


# Submodules the project's trainers attach to the policy, saved with it and read back by their own evaluators
# (methods.recpo.head.PROJECTION_MODULE: RecPO's learned projection, also in recpo_projection.safetensors): weights
# under them are expected extras of a causal LM folder, not a sign of the wrong architecture.
POLICY_EXTRA_MODULES = ("recpo_projection",)


def _refuse_incomplete_load(path, info: dict) -> None:
    """CheckpointError when transformers' loading info lists missing, unexpected or mismatched weights (unexpected
    ones under ``POLICY_EXTRA_MODULES`` excepted)."""
    parts = []
    for key, what in (("missing_keys", "missing (would be randomly initialised)"),
                      ("unexpected_keys", "unexpected (in the file, not in the model)"),
                      ("mismatched_keys", "of the wrong shape")):
        keys = sorted(str(k[0] if isinstance(k, (tuple, list)) else k) for k in (info.get(key) or ()))
        if key == "unexpected_keys":
            keys = [k for k in keys if k.split(".", 1)[0] not in POLICY_EXTRA_MODULES]
        if keys:
            parts.append(f"{len(keys)} weights {what}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}")
    if parts:
        model_type = None
        try:
            model_type = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            pass
        hint = (f"; does config.json's model_type {model_type!r} match the weights?" if model_type else "")
        raise CheckpointError(path, "; ".join(parts) + hint + " Refusing to load a partly random model.")


def _local_dir(path) -> bool:
    return Path(str(path)).expanduser().is_dir()


@contextlib.contextmanager
def _zero3_off():
    """Inside: transformers does not see a ZeRO-3 config (set by the parsed TrainingArguments of a DeepSpeed
    launch), so a meta-device load is allowed; the same config object is set again afterwards."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    active = ref() if ref is not None else None
    if active is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(active)


def check_weights_load(path: str | os.PathLike, trust_remote_code: bool = False, verify: bool = True,
                       model_type: str | None = None) -> str:
    """``path`` when its weights load into the model its config.json describes with nothing missing, unexpected or
    mis-shaped (checked on the meta device: headers only, no tensor read), else ``CheckpointError``. A local folder
    is also verified (``modeling.checkpoint_integrity.verify_checkpoint``: hashes, or sizes + parse). LoRA adapter
    folders are checked through their base model; hub ids are left to the real load. ``verify=False``: the files
    were verified already (``resolve_resume``). ``model_type``: the folder's config.json must name it (a resume
    checkpoint must be of the model being trained)."""
    from transformers import AutoModelForCausalLM

    path = str(path)
    if not _local_dir(path):
        return path
    if verify:
        verify_checkpoint(path, for_resume=not _is_model_dir(Path(path)))
    if model_type is not None and (Path(path) / "config.json").is_file():
        found = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
        if found != model_type:
            raise CheckpointError(path, f"config.json names model_type {found!r}, the model being trained is "
                                        f"{model_type!r}; resume from a checkpoint of this run", "config.json")
    source = path
    if is_adapter_dir(path):
        source = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
        if not _local_dir(source):
            return path
        if verify:
            verify_checkpoint(source)
    if not (Path(source) / "config.json").is_file() or not any(
            (Path(source) / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        return path  # e.g. a DeepSpeed resume checkpoint without consolidated weights
    with _zero3_off():  # a meta model holds no memory: nothing for ZeRO-3 to partition
        _, info = AutoModelForCausalLM.from_pretrained(source, device_map="meta", output_loading_info=True,
                                                       trust_remote_code=trust_remote_code)
    _refuse_incomplete_load(source, info)
    return path


def load_model_and_tokenizer(path: str | os.PathLike, dtype="auto", trust_remote_code: bool = False,
                             padding_side: str = "left", merge_adapter: bool = True, **model_kwargs):
    """(AutoModelForCausalLM, tokenizer) from a local folder or a hub id.

    dtype: "auto" (the checkpoint's dtype), "float32", "bfloat16", "float16" or a torch.dtype.
    padding_side: "left" for generation (default), "right" for training collators that expect it.
    A LoRA adapter folder loads its base model (adapter_config.json `base_model_name_or_path`) plus the adapter,
    merged into plain weights when `merge_adapter` (default) so callers see an ordinary model.
    The model's pad token id and generation config's pad id are set from the tokenizer.
    """
    from transformers import AutoModelForCausalLM

    path = check_model_source(path)
    kwargs = dict(dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code, **model_kwargs)
    if is_adapter_dir(path):
        from peft import PeftModel

        base = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{path}/adapter_config.json has no base_model_name_or_path")
        check_model_source(base)
        for folder in (path, base):
            if _local_dir(folder):
                verify_checkpoint(folder)
        model, info = AutoModelForCausalLM.from_pretrained(base, output_loading_info=True, **kwargs)
        _refuse_incomplete_load(base, info)
        model = PeftModel.from_pretrained(model, path)
        if merge_adapter:
            model = model.merge_and_unload()
        tok_source = path if (Path(path) / "tokenizer_config.json").is_file() else base
    else:
        if _local_dir(path):
            verify_checkpoint(path)
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
        _refuse_incomplete_load(path, info)
        tok_source = path
    tokenizer = load_tokenizer(tok_source, trust_remote_code=trust_remote_code, padding_side=padding_side)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def list_checkpoints(run_dir: str | os.PathLike, complete_only: bool = True, for_resume: bool = False) -> list[int]:
    """Steps of the `checkpoint-N` folders in `run_dir`, ascending. With `complete_only` (default) a folder that is
    partial (being written, or left by a killed run: `modeling.checkpoint_integrity.checkpoint_problem`) is left
    out with a warning naming it and why; `for_resume` asks for what resuming needs instead of a loadable model."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    steps = []
    for p in root.iterdir():
        if not (p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))):
            continue
        if complete_only and (why := checkpoint_problem(p, for_resume=for_resume)):
            logger.warning("skipping %s: %s", p, why)
            continue
        steps.append(int(m.group(1)))
    return sorted(steps)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def resolve_checkpoint(run_dir_or_path: str | os.PathLike, step: int | str | None = None) -> str:
    """The model folder to load.

    step=None: `run_dir_or_path` itself when it holds a model (config.json / adapter_config.json) or is not a
    local folder (a hub id); a run folder with only checkpoints is an error listing them.
    step=N (int or digits): `run_dir/checkpoint-N`; "last"/"latest": the highest COMPLETE checkpoint (partial ones,
    still being written or left by a killed run, are skipped with a warning). Errors name the available
    checkpoints; asking for a partial checkpoint by number is an error saying why it is partial.
    """
    root = Path(run_dir_or_path)
    steps = list_checkpoints(root)
    available = ", ".join(f"checkpoint-{s}" for s in steps) or "none"
    if step is None:
        if _is_model_dir(root):
            if why := weights_problem(root):
                raise FileNotFoundError(f"{root}: the model is not whole ({why}); was its save interrupted?")
            return str(run_dir_or_path)
        if not root.exists():
            return str(run_dir_or_path)
        raise FileNotFoundError(
            f"{root} holds no model (config.json); pick a checkpoint with step=N or 'last' "
            f"(available: {available})"
        )
    if isinstance(step, str):
        if step.lower() in ("last", "latest"):
            if not steps:
                raise FileNotFoundError(f"{root} has no complete checkpoint-N folders")
            return str(root / f"checkpoint-{steps[-1]}")
        if not step.strip().isdigit():
            raise ValueError(f"step must be an int, 'last' or None, got {step!r}")
        step = int(step)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder not found: {root}")
    path = root / f"checkpoint-{int(step)}"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found; available checkpoints in {root}: {available}")
    if why := checkpoint_problem(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint: {why}; complete ones in {root}: {available}")
    return str(path)


def run_name(model_name: str | os.PathLike) -> str:
    """A path-safe name for a model: the folder name for a local folder, the hub id otherwise (kept as nested
    ``org/model`` folders, the released Rank-GRPO layout: ``results/Qwen/Qwen2.5-0.5B-Instruct``).

    models/tiny-ml100k -> tiny-ml100k; results/x/checkpoint-300 -> x-checkpoint-300;
    Qwen/Qwen2.5-0.5B-Instruct -> Qwen/Qwen2.5-0.5B-Instruct.
    """
    text = str(model_name).rstrip("/\\")
    path = Path(text)
    if path.exists() or text.startswith((".", "/", "~")):
        resolved = path.expanduser().resolve()
        name = resolved.name
        if _CHECKPOINT_RE.match(name) and resolved.parent.name:
            name = f"{resolved.parent.name}-{name}"
    else:
        name = text
    name = "/".join(_UNSAFE_RE.sub("_", part).strip("._") for part in name.split("/"))
    if not name or any(not part for part in name.split("/")):
        raise ValueError(f"cannot derive a run name from {model_name!r}")
    return name


def check_resume(checkpoint: str | None, model) -> None:
    """A resume checkpoint (already verified by ``resolve_resume``) must hold weights of ``model``'s type that
    load with nothing missing or unexpected: ``CheckpointError`` naming it otherwise. None: nothing to check."""
    if checkpoint is None:
        return
    config = getattr(model, "config", None)
    check_weights_load(checkpoint, verify=False, model_type=getattr(config, "model_type", None))


def resolve_resume(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """`--resume_from_checkpoint`: None/""/"false" -> start fresh; "true"/"last"/"latest" -> the newest COMPLETE
    `checkpoint-N` in `output_dir` (partial ones -- a run killed while writing -- are skipped with a warning; an
    error when none is left); a path -> that checkpoint folder, which must be complete. The chosen checkpoint is
    verified (``verify_checkpoint``: every file's sha256, or sizes + parse for older ones): ``CheckpointError``
    naming the file, before the trainer's loader meets a corrupt optimizer.pt."""
    if value is None or value is False or str(value).strip().lower() in ("", "false", "none", "no"):
        return None
    if value is True or str(value).strip().lower() in ("true", "last", "latest", "yes"):
        steps = list_checkpoints(output_dir, for_resume=True)
        if not steps:
            found = [p.name for p in Path(output_dir).glob("checkpoint-*")] if Path(output_dir).is_dir() else []
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: {output_dir} has no checkpoint-N folder "
                                    f"complete enough to resume from (found: {', '.join(sorted(found)) or 'none'})")
        chosen = Path(output_dir) / f"checkpoint-{steps[-1]}"
        verify_checkpoint(chosen, for_resume=True)
        return str(chosen)
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    if why := checkpoint_problem(path, for_resume=True):
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a complete checkpoint ({why})")
    verify_checkpoint(path, for_resume=True)
    return str(path)
