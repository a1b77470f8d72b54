"""Item texts and their FROZEN text embeddings, computed once and cached on disk.

A text encoder is any object with `encode(texts, batch_size=...) -> np.ndarray (n, dim)`, rows L2-normalised
(`modeling.text_encoder.load_text_encoder()` gives all-MiniLM-L6-v2 offline; tests pass a small stand-in). Its
`name` attribute (or its class name) goes into the cache key, so two encoders never share a cache file.

Cache: `<cache_dir>/<sha256 of encoder name + dim + texts>.npy`, read back with `allow_pickle=False`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

MAX_TEXT_CHARS = 512  # item descriptions are cut: MiniLM reads 256 word pieces anyway


def item_text(item: Mapping) -> str:
    """The text of a catalog item that the encoder reads: `Title (Year). Genres: a, b. <text>`."""
    title = str(item.get("title") or "").strip()
    if not title:
        raise ValueError(f"catalog item {item.get('id')!r} has no title")
    year = item.get("year")
    parts = [f"{title} ({year})" if year else title]
    genres = item.get("genres")
    if genres:
        parts.append("Genres: " + ", ".join(str(g) for g in genres))
    text = item.get("text")
    if text:
        parts.append(str(text))
    return ". ".join(parts)[:MAX_TEXT_CHARS]


def encoder_name(encoder) -> str:
    return str(getattr(encoder, "name", None) or getattr(encoder, "name_or_path", None) or type(encoder).__name__)


def check_embeddings(array, n_rows: int, where: str) -> np.ndarray:
    """(n_rows, dim) finite float32 rows of norm 1 (what every encoder must return), or a ValueError."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != n_rows:
        raise ValueError(f"{where}: expected ({n_rows}, dim) embeddings, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: embeddings contain NaN or inf")
    norms = np.linalg.norm(array, axis=1)
    if n_rows and not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"{where}: embeddings must be L2-normalised (norms in [{norms.min():.4f}, "
                         f"{norms.max():.4f}])")
    return array


def cache_key(encoder, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(encoder_name(encoder).encode())
    for text in texts:
        digest.update(b"\x00" + text.encode("utf-8"))
    digest.update(f"\x01{len(texts)}".encode())
    return digest.hexdigest()[:32]


def encode_texts(encoder, texts: Sequence[str], cache_dir: str | os.PathLike | None = None,
                 batch_size: int = 128) -> np.ndarray:
    """Embeddings of `texts` (checked by `check_embeddings`), from `cache_dir` when it holds them."""
    texts = [str(t) for t in texts]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(encoder, texts)}.npy"
        if path.is_file():
            return check_embeddings(np.load(path, allow_pickle=False), len(texts), str(path))
    array = check_embeddings(encoder.encode(texts, batch_size=batch_size), len(texts),
                             f"{encoder_name(encoder)}.encode") if texts else np.zeros((0, 0), np.float32)
    if path is not None and texts:
        path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: a concurrent reader never sees half a file
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
    return array
