"""Is a checkpoint folder complete? The markers the trainers write around a checkpoint, and the checks every reader
(resume, `resolve_checkpoint`, eval_val.py) runs before it trusts one.

A checkpoint is written as (trainers/checkpointing.py):

    checkpoint-N/checkpoint_writing.json      first, before any other file (the folder is "being written")
    ... model, optimizer, scheduler, RNG, trainer_state.json, method state ...
    checkpoint-N/checkpoint_complete.json     last, atomically (tmp + rename), listing every file with its size
                                              and its sha256
    checkpoint_writing.json removed

so a run killed at any point leaves either no folder, a folder with `checkpoint_writing.json` and no completion
marker (partial), or a complete one. A folder with neither marker was written before kill-safe checkpoints (or by
another tool): it is checked structurally instead (config, weights whose sizes match their own headers, and for
resuming a readable trainer_state.json).

Two depths of checking: `checkpoint_problem` (cheap: markers, sizes, headers; run on every listing) and
`verify_checkpoint` (run on the one checkpoint that is about to be loaded or resumed from): also every file's
sha256 against the marker, so a same-size corrupt file is caught before a loader fails on it with a message that
names neither the file nor the checkpoint. A checkpoint sealed before hashes were recorded (marker format 1, or no
marker) is verified by its sizes plus a parse attempt of each file (safetensors header, torch zip CRCs), with a
note that nothing stronger was possible.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
import zipfile
from pathlib import Path

COMPLETE_MARKER = "checkpoint_complete.json"
WRITING_MARKER = "checkpoint_writing.json"
MARKER_FORMAT = 2  # 1: files and sizes; 2: also "sha256" {file: hex digest}
SAFETENSORS_FILES = ("model.safetensors", "adapter_model.safetensors")
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN_FILES = ("pytorch_model.bin", "adapter_model.bin")
WEIGHT_FILES = SAFETENSORS_FILES + (SAFETENSORS_INDEX,) + TORCH_BIN_FILES + ("pytorch_model.bin.index.json",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")  # torch.save files: optimizer.pt, scheduler.pt, rng_state.pth, ...

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint (or model folder) that must not be loaded: the message names the checkpoint, the file and what
    is wrong, on one line."""

    def __init__(self, checkpoint: str | os.PathLike, reason: str, file: str | None = None):
        self.checkpoint, self.file, self.reason = str(checkpoint), file, reason
        super().__init__(f"checkpoint {checkpoint}: " + (f"{file}: " if file else "") + reason)

    def __reduce__(self):
        return (CheckpointError, (self.checkpoint, self.reason, self.file))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(paths) -> list[str]:
    """``file_sha256`` of each path, files hashed in parallel threads (hashlib releases the GIL): a checkpoint's
    shards and optimizer files do not wait for each other."""
    from concurrent.futures import ThreadPoolExecutor

    paths = list(paths)
    if len(paths) < 2:
        return [file_sha256(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(file_sha256, paths))


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
    """Record every file of `folder` with its size and sha256 in `checkpoint_complete.json` (atomically), then drop
    the writing marker. Call after every process has finished writing. Returns the marker's content."""
    root = Path(folder)
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in (COMPLETE_MARKER, WRITING_MARKER) and not path.name.startswith(
                f".{COMPLETE_MARKER}.tmp"):
            files[rel] = path.stat().st_size
    hashes = dict(zip(files, files_sha256(root / rel for rel in files)))
    payload = {"format": MARKER_FORMAT, "step": int(step), "finished": time.time(), "files": files,
               "sha256": hashes}
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


def _torch_zip_problem(path: Path, crc: bool = False) -> str | None:
    """Why a torch.save file is not whole (empty, no zip directory, or with ``crc`` a member whose CRC-32 does not
    match: a same-size corruption), or None. The legacy pickle format cannot be checked beyond its size."""
    if path.stat().st_size == 0:
        return f"{path.name} is empty (0 bytes)"
    with open(path, "rb") as fh:
        is_zip_format = fh.read(2) == b"PK"  # torch.save's default format
    if is_zip_format and not zipfile.is_zipfile(path):
        return f"{path.name} is truncated (no zip directory at its end)"
    if is_zip_format and crc:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
            return f"{path.name} is corrupt ({type(err).__name__}: {err})"
        if bad is not None:
            return f"{path.name} is corrupt (member {bad} fails its CRC check)"
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


def verify_checkpoint(folder: str | os.PathLike, for_resume: bool = False) -> str:
    """Raise ``CheckpointError`` (naming the checkpoint and the file) unless `folder` is whole enough to load
    (``for_resume``: to resume from); returns how it was verified ("sha256" or "sizes+parse").

    `checkpoint_problem` first; then, when the completion marker records hashes, every file's sha256; otherwise
    (older checkpoints, folders from other tools) a parse of every weights and torch file: safetensors headers and
    sizes, torch zip directories and CRCs (a note is logged that no hash was recorded)."""
    root = Path(folder)
    if why := checkpoint_problem(root, for_resume=for_resume):
        raise CheckpointError(root, why)
    hashes = None
    if (root / COMPLETE_MARKER).is_file():
        hashes = json.loads((root / COMPLETE_MARKER).read_text(encoding="utf-8")).get("sha256")
    if isinstance(hashes, dict) and hashes:
        for rel in hashes:
            if not (root / rel).is_file():
                raise CheckpointError(root, f"listed in {COMPLETE_MARKER} but missing", rel)
        for (rel, expected), actual in zip(hashes.items(), files_sha256(root / rel for rel in hashes)):
            if actual != expected:
                raise CheckpointError(root, f"sha256 differs from the one {COMPLETE_MARKER} recorded (the file was "
                                            "corrupted or replaced after the checkpoint was saved); re-copy it or "
                                            "use another checkpoint", rel)
        return "sha256"
    for path in sorted(root.iterdir()):
        if not path.is_file():
            continue
        why = None
        if path.suffix == ".safetensors":
            why = safetensors_problem(path)
        elif path.suffix in TORCH_SUFFIXES:
            why = _torch_zip_problem(path, crc=True)
        if why:
            raise CheckpointError(root, why.split(" ", 1)[1] if why.startswith(path.name) else why, path.name)
    logger.info("%s: no sha256 recorded (saved before checkpoint hashes, or not by these trainers): verified by "
                "sizes and a parse of its files only", root)
    return "sizes+parse"


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
