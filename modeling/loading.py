"""Loading models, tokenizers and checkpoints the same way in every script.

    model, tok = load_model_and_tokenizer("models/tiny-ml100k")                 # local dir or HF id
    path = resolve_checkpoint("results/tiny-ml100k-sft", step=200)              # results/.../checkpoint-200
    run_name("Qwen/Qwen2.5-0.5B-Instruct") -> "Qwen/Qwen2.5-0.5B-Instruct";  run_name("models/tiny") -> "tiny"

`trust_remote_code` is False unless the caller asks for it. A folder holding a LoRA adapter (adapter_config.json,
as saved by SFT with --use_lora) loads as base model + adapter, merged by default.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from modeling.checkpoint_integrity import checkpoint_problem, weights_problem

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
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        model = PeftModel.from_pretrained(model, path)
        if merge_adapter:
            model = model.merge_and_unload()
        tok_source = path if (Path(path) / "tokenizer_config.json").is_file() else base
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
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


def resolve_resume(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """`--resume_from_checkpoint`: None/""/"false" -> start fresh; "true"/"last"/"latest" -> the newest COMPLETE
    `checkpoint-N` in `output_dir` (partial ones -- a run killed while writing -- are skipped with a warning; an
    error when none is left); a path -> that checkpoint folder, which must be complete."""
    if value is None or value is False or str(value).strip().lower() in ("", "false", "none", "no"):
        return None
    if value is True or str(value).strip().lower() in ("true", "last", "latest", "yes"):
        steps = list_checkpoints(output_dir, for_resume=True)
        if not steps:
            found = [p.name for p in Path(output_dir).glob("checkpoint-*")] if Path(output_dir).is_dir() else []
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: {output_dir} has no checkpoint-N folder "
                                    f"complete enough to resume from (found: {', '.join(sorted(found)) or 'none'})")
        return str(Path(output_dir) / f"checkpoint-{steps[-1]}")
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    if why := checkpoint_problem(path, for_resume=True):
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a complete checkpoint ({why})")
    return str(path)
