"""Is a checkpoint folder complete? The markers the trainers write around a checkpoint, and the checks every reader
(resume, `resolve_checkpoint`, eval_val.py) runs before it trusts one.

A checkpoint is written as (trainers/checkpointing.py):

    checkpoint-N/checkpoint_writing.json      first, before any other file (the folder is "being written")
    ... model, optimizer, scheduler, RNG, trainer_state.json, method state ...
    checkpoint-N/checkpoint_complete.json     last, atomically (tmp + rename), listing every file and its size
    checkpoint_writing.json removed

so a run killed at any point leaves either no folder, a folder with `checkpoint_writing.json` and no completion
marker (partial), or a complete one. A folder with neither marker was written before kill-safe checkpoints (or by
another tool): it is checked structurally instead (config, weights whose sizes match their own headers, and for
resuming a readable trainer_state.json).
"""
from __future__ import annotations

import json
import os
import struct
import time
import zipfile
from pathlib import Path

COMPLETE_MARKER = "checkpoint_complete.json"
WRITING_MARKER = "checkpoint_writing.json"
MARKER_FORMAT = 1
SAFETENSORS_FILES = ("model.safetensors", "adapter_model.safetensors")
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN_FILES = ("pytorch_model.bin", "adapter_model.bin")
WEIGHT_FILES = SAFETENSORS_FILES + (SAFETENSORS_INDEX,) + TORCH_BIN_FILES + ("pytorch_model.bin.index.json",)


# --------------------------------------------------------------------------------------------------- writers
def _atomic_write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def mark_checkpoint_writing(folder: str | os.PathLike, step: int) -> None:
    """Say that `folder` is being written (call before any other file goes in)."""
    _atomic_write_json(Path(folder) / WRITING_MARKER, {"format": MARKER_FORMAT, "step": int(step), "pid": os.getpid(),
                                                       "started": time.time()})


def mark_checkpoint_complete(folder: str | os.PathLike, step: int) -> dict:
    """Record every file of `folder` with its size in `checkpoint_complete.json` (atomically), then drop the writing
    marker. Call after every process has finished writing. Returns the marker's content."""
    root = Path(folder)
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in (COMPLETE_MARKER, WRITING_MARKER) and not path.name.startswith(
                f".{COMPLETE_MARKER}.tmp"):
            files[rel] = path.stat().st_size
    payload = {"format": MARKER_FORMAT, "step": int(step), "finished": time.time(), "files": files}
    _atomic_write_json(root / COMPLETE_MARKER, payload)
    (root / WRITING_MARKER).unlink(missing_ok=True)
    return payload


# --------------------------------------------------------------------------------------------------- readers
def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why a .safetensors file is not whole (its size must be 8 + header length + the end of its last tensor), or
    None. Reads the header only."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} has {size} bytes, shorter than a safetensors header"
            (n_header,) = struct.unpack("<Q", head)
            if 8 + n_header > size:
                return f"{path.name} is truncated: header says {n_header} header bytes, file has {size} bytes"
            header = json.loads(fh.read(n_header))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return f"{path.name} has an unreadable safetensors header ({type(err).__name__}: {err})"
    if not isinstance(header, dict):
        return f"{path.name} has a safetensors header that is not a JSON object"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2]
    expected = 8 + n_header + max(ends, default=0)
    if size != expected:
        state = "truncated" if size < expected else "oversized"
        return f"{path.name} is {state}: {size} bytes, its header says {expected}"
    return None


def _torch_zip_problem(path: Path) -> str | None:
    with open(path, "rb") as fh:
        is_zip_format = fh.read(2) == b"PK"  # torch.save's default format; the legacy pickle format cannot be checked
    if is_zip_format and not zipfile.is_zipfile(path):
        return f"{path.name} is truncated (no zip directory at its end)"
    return None


def weights_problem(folder: str | os.PathLike) -> str | None:
    """Why the model weights in `folder` are not whole (a truncated file, a shard named by the index missing or
    truncated), or None. A folder without any weight file is not a problem here (see `checkpoint_problem`)."""
    root = Path(folder)
    for name in SAFETENSORS_FILES:
        if (root / name).is_file() and (why := safetensors_problem(root / name)):
            return why
    index = root / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            return f"{SAFETENSORS_INDEX} is unreadable ({type(err).__name__}: {err})"
        for shard in shards:
            if not (root / shard).is_file():
                return f"shard {shard} named by {SAFETENSORS_INDEX} is missing"
            if why := safetensors_problem(root / shard):
                return why
    for name in TORCH_BIN_FILES:
        if (root / name).is_file() and (why := _torch_zip_problem(root / name)):
            return why
    return None


def _marker_problem(root: Path) -> str | None:
    try:
        marker = json.loads((root / COMPLETE_MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{COMPLETE_MARKER} is unreadable ({type(err).__name__}: {err})"
    for rel, size in files.items():
        path = root / rel
        if not path.is_file():
            return f"{rel} (listed in {COMPLETE_MARKER}) is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{rel} has {actual} bytes, {COMPLETE_MARKER} says {size} (changed after the checkpoint was written)"
    return None


def checkpoint_problem(folder: str | os.PathLike, for_resume: bool = False) -> str | None:
    """Why `folder` is not a usable checkpoint, or None when it is.

    With a completion marker: every listed file is there with its recorded size. With only the writing marker: it
    is being written, or the run was killed while writing it. With neither (older runs, other tools): structural
    checks. `for_resume=False` (load it as a model) also needs a config and a whole weights file;
    `for_resume=True` (continue training) needs a readable trainer_state.json (DeepSpeed checkpoints may hold no
    consolidated weights).
    """
    root = Path(folder)
    if not root.is_dir():
        return "not a folder"
    if (root / COMPLETE_MARKER).is_file():
        if why := _marker_problem(root):
            return why
    elif (root / WRITING_MARKER).is_file():
        return (f"being written, or its run was interrupted while writing it ({WRITING_MARKER} and no "
                f"{COMPLETE_MARKER})")
    elif why := weights_problem(root):  # written without markers: check what can be checked
        return why
    if for_resume:
        try:
            json.loads((root / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
        except FileNotFoundError:
            return "no trainer_state.json (written partly, or not by a Trainer)"
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"trainer_state.json is unreadable ({type(err).__name__}: {err})"
    else:
        if not ((root / "config.json").is_file() or (root / "adapter_config.json").is_file()):
            return "no config.json or adapter_config.json"
        if not any((root / name).is_file() for name in WEIGHT_FILES):
            return "no model weights file (" + ", ".join(WEIGHT_FILES[:3]) + ", ...)"
    return None
