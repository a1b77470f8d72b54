"""Ranking metrics shared by reward logging and evaluation (docs/ARCHITECTURE.md "Metrics").

* Recall@K = hits in the top K / |GT|.
* NDCG@K = DCG@K / IDCG@K, DCG = sum_k rel_k / log2(k + 1) (k 1-based), IDCG over min(|GT|, K) ones.
* HR@K = 1 if any hit in the top K.

Protocols:

* ``strict``: the first N parsed items at their parsed positions; invalid items (out of catalog, seen,
  duplicate) are misses.
* ``packed`` (the released Rank-GRPO evaluation; use it to compare with the paper): drop ``seen`` and
  ``out_of_catalog`` items from the WHOLE parsed list, pack the rest upward and score the top K of that list
  (so an item listed past rank N can move up, as in the released code); IDCG over
  min(|GT|, K, len(packed list)).

A sample with an empty ground truth scores 0 on every ranking metric (``num_groundtruth`` = 0 in its
dict says so); callers usually drop such samples before averaging.

The low-level functions accept a 1-D relevance vector or a 2-D batch ``(B, L)`` (scored along the last
axis) and are vectorised with a precomputed discount table.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from .judge import HIT, MISS, OUT_OF_CATALOG, SEEN, Judgement

__all__ = [
    "PROTOCOLS",
    "discounts",
    "hit_at_k",
    "mean_metrics",
    "ndcg_at_k",
    "ranking_metrics",
    "recall_at_k",
]

PROTOCOLS = ("packed", "strict")

_DISC = 1.0 / np.log2(np.arange(2, 1026, dtype=np.float64))  # position k (1-based) -> 1/log2(k+1)
_IDEAL = np.concatenate([[0.0], np.cumsum(_DISC)])  # _IDEAL[m] = DCG of m leading ones


def _ensure(n: int) -> None:
    global _DISC, _IDEAL
    if n > len(_DISC):
        size = max(n, 2 * len(_DISC))
        _DISC = 1.0 / np.log2(np.arange(2, size + 2, dtype=np.float64))
        _IDEAL = np.concatenate([[0.0], np.cumsum(_DISC)])


def discounts(n: int) -> np.ndarray:
    """``[1/log2(2), 1/log2(3), ..., 1/log2(n+1)]`` (a read-only view of the shared table)."""
    _ensure(n)
    v = _DISC[:n]
    v.flags.writeable = False
    return v


def ideal_dcg(m: np.ndarray | int) -> np.ndarray | float:
    """DCG of ``m`` leading ones (vectorised over integer ``m``)."""
    m_arr = np.asarray(m, dtype=np.int64)
    _ensure(int(m_arr.max(initial=0)))
    out = _IDEAL[np.clip(m_arr, 0, None)]
    return float(out) if np.ndim(out) == 0 else out


def _topk(rel: np.ndarray, k: int) -> np.ndarray:
    rel = np.asarray(rel, dtype=np.float64)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return rel[..., :k]


def recall_at_k(rel: np.ndarray, n_gt, k: int):
    """Hits in the top ``k`` / ``n_gt`` (0 where ``n_gt`` is 0)."""
    hits = _topk(rel, k).sum(axis=-1)
    n = np.asarray(n_gt, dtype=np.float64)
    out = np.divide(hits, n, out=np.zeros(np.broadcast(hits, n).shape), where=n > 0)
    return float(out) if np.ndim(out) == 0 else out


def ndcg_at_k(rel: np.ndarray, n_gt, k: int, ideal_cap=None):
    """DCG@k / IDCG@k with IDCG over min(n_gt, k[, ideal_cap]) ones (0 where that is 0)."""
    top = _topk(rel, k)
    L = top.shape[-1]
    dcg = top @ discounts(L) if L else np.zeros(top.shape[:-1])
    m = np.minimum(np.asarray(n_gt, dtype=np.int64), k)
    if ideal_cap is not None:
        m = np.minimum(m, np.asarray(ideal_cap, dtype=np.int64))
    idcg = np.asarray(ideal_dcg(m), dtype=np.float64)
    shape = np.broadcast(np.asarray(dcg), idcg).shape
    out = np.divide(dcg, idcg, out=np.zeros(shape), where=idcg > 0)
    return float(out) if np.ndim(out) == 0 else out


def hit_at_k(rel: np.ndarray, k: int):
    """1.0 if any hit in the top ``k``, else 0.0."""
    out = (_topk(rel, k) > 0).any(axis=-1).astype(np.float64)
    return float(out) if np.ndim(out) == 0 else out


def ranking_metrics(
    j: Judgement,
    n_groundtruth: int | None = None,
    ks: Sequence[int] = (5, 10, 15, 20),
    protocol: str = "packed",
    n_items: int = 20,
) -> dict[str, float]:
    """Per-sample metrics of a judged completion.

    Keys: ``recall@K``, ``ndcg@K``, ``hr@K`` for each K, ``catalog_hit_ratio`` (in-catalog items among the
    first ``n_items`` parsed items / those items; 0 when nothing parsed), ``valid_item_ratio`` (hit or miss
    items among the first ``n_items`` positions / ``n_items``), ``num_parsed`` (all parsed items, before
    the cut), ``num_groundtruth``. ``n_groundtruth`` defaults to ``j.n_groundtruth``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    n_gt = j.n_groundtruth if n_groundtruth is None else int(n_groundtruth)
    status = j.status[:n_items]
    if protocol == "strict":
        rel = np.fromiter((s == HIT for s in status), dtype=np.float64, count=len(status))
        cap = None
    else:  # filter the whole list, then pack (the released evaluation)
        rel = np.asarray([s == HIT for s in j.status if s not in (SEEN, OUT_OF_CATALOG)], dtype=np.float64)
        cap = len(rel)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(rel, n_gt, k)
        out[f"ndcg@{k}"] = ndcg_at_k(rel, n_gt, k, ideal_cap=cap)
        out[f"hr@{k}"] = hit_at_k(rel, k) if n_gt > 0 else 0.0
    out["catalog_hit_ratio"] = j.catalog_hit_ratio(n_items)
    out["valid_item_ratio"] = j.valid_item_ratio(n_items)
    out["num_parsed"] = float(len(j.status))
    out["num_groundtruth"] = float(n_gt)
    return out


def mean_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Average every numeric key over ``rows`` (keys missing from a row are averaged over the rows that
    have them); adds ``num_samples``. Non-numeric values (e.g. a protocol name) are skipped."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    n = 0
    for row in rows:
        n += 1
        for key, v in row.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                continue
            sums[key] = sums.get(key, 0.0) + float(v)
            counts[key] = counts.get(key, 0) + 1
    out = {key: sums[key] / counts[key] for key in sums}
    out["num_samples"] = float(n)
    return out
