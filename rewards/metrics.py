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
axis) and are vectorised with a precomputed discount table. DCG is summed left to right (``np.add.accumulate``),
so one list scored alone and the same list inside a batch give bit-identical values.

Batches: :func:`score_id_lists` scores ranked lists of catalog ids (a recommender that writes no text; None = a
line that matched no catalog item): ``judge_id_lists`` then :func:`batch_ranking_metrics`, per-sample arrays with
exactly :func:`ranking_metrics`' keys and values. Text is scored the same way after ``rewards.judge.match_texts``
(:func:`score_texts`), so there is one path from ids to metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .catalog import Catalog
from .judge import (
    DUPLICATE,
    HIT,
    MISS,
    OUT_OF_CATALOG,
    SEEN,
    BatchJudgement,
    Judgement,
    canonical_targets,
    judge_id_lists,
    match_texts,
)

__all__ = [
    "PROTOCOLS",
    "BatchScores",
    "batch_mean",
    "batch_ranking_metrics",
    "check_scoring_options",
    "score_id_lists",
    "score_texts",
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


def check_scoring_options(ks: Sequence[int], n_items: int, minimum: int = 0) -> tuple[int, ...]:
    """Range-check the scoring options every metric takes; returns ``ks`` as a tuple of ints.

    ``n_items`` (the list length N the ratios and the strict protocol cut to) and every K must be ints
    >= ``minimum``: a negative N makes ``valid_item_ratio`` negative (-8.4 was seen) and a negative K slices
    from the end. The metric functions accept 0 (an empty cut, all zeros: the edge case the batch path is tested
    on); an evaluation passes ``minimum=1``, because N = 0 or K = 0 would put a table of zeros in metrics.json.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < minimum:
        raise ValueError(f"n_items must be an int >= {minimum} (the length of a recommendation list), "
                         f"got {n_items!r}")
    try:
        ks = tuple(ks)
    except TypeError:
        raise ValueError(f"ks must be a sequence of ints >= {minimum}, got {ks!r}") from None
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < minimum]
    if bad or (minimum >= 1 and not ks):
        raise ValueError(f"ks must be {'one or more ' if minimum >= 1 else ''}ints >= {minimum} (cut-offs K of "
                         f"Recall/NDCG/HR@K), got {list(ks)!r}")
    return tuple(int(k) for k in ks)


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
    dcg = np.add.accumulate(top * discounts(L), axis=-1)[..., -1] if L else np.zeros(top.shape[:-1])
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
    ks = check_scoring_options(ks, n_items)
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


# ------------------------------------------------------------------------------------------------ batches
_CODE = {OUT_OF_CATALOG: 0, SEEN: 1, DUPLICATE: 2, HIT: 3, MISS: 4}


def metric_names(ks: Sequence[int]) -> list[str]:
    """The keys of :func:`ranking_metrics`, in its order."""
    keys = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr")]
    return keys + ["catalog_hit_ratio", "valid_item_ratio", "num_parsed", "num_groundtruth"]


def batch_ranking_metrics(
    judged: BatchJudgement | Sequence[Judgement],
    n_groundtruth: Sequence[int] | np.ndarray | None = None,
    ks: Sequence[int] = (5, 10, 15, 20),
    protocol: str = "packed",
    n_items: int = 20,
) -> dict[str, np.ndarray]:
    """:func:`ranking_metrics` of every sample at once: ``{key: (B,) float64}`` with the same keys and the same
    values (bit for bit). ``judged``: a ``BatchJudgement`` or a list of ``Judgement``; ``n_groundtruth``
    defaults to theirs."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    ks = list(check_scoring_options(ks, n_items))
    if not isinstance(judged, BatchJudgement):
        judged = BatchJudgement.from_judgements(list(judged), n_items=n_items)
    statuses = judged.status
    B = len(statuses)
    n_gt = judged.n_groundtruth if n_groundtruth is None else np.asarray(n_groundtruth, dtype=np.int64)
    if n_gt.shape != (B,):
        raise ValueError(f"n_groundtruth has shape {n_gt.shape}, expected ({B},)")
    lengths = np.fromiter((len(st) for st in statuses), dtype=np.int64, count=B)
    total = int(lengths.sum())
    code_of = _CODE.__getitem__
    codes = np.fromiter((code_of(x) for st in statuses for x in st), dtype=np.int8, count=total)
    row = np.repeat(np.arange(B), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(total) - np.repeat(starts, lengths)  # 0-based position in its parsed list
    is_hit = codes == _CODE[HIT]
    k_max = max(ks, default=0)

    if protocol == "strict":  # the first n_items parsed items at their positions
        width = min(n_items, k_max)
        sel = pos < width
        col = pos[sel]
        cap = None
    else:  # seen / out-of-catalog dropped from the whole list, the rest packed upward
        kept = codes >= _CODE[DUPLICATE]
        kept_row = row[kept]
        packed_len = np.bincount(kept_row, minlength=B)
        kept_starts = np.cumsum(packed_len) - packed_len
        packed_pos = np.arange(len(kept_row)) - np.repeat(kept_starts, packed_len)
        width = k_max
        sel = np.zeros(total, dtype=bool)
        sel_kept = packed_pos < width
        sel[np.flatnonzero(kept)[sel_kept]] = True
        col = packed_pos[sel_kept]
        cap = packed_len
    rel = np.zeros((B, width), dtype=np.float64)
    rel[row[sel], col] = is_hit[sel]
    # cumulative hits / DCG over positions; column c = the top c (column 0: nothing)
    hits = np.zeros((B, width + 1))
    hits[:, 1:] = np.cumsum(rel, axis=1)
    dcg = np.zeros((B, width + 1))
    if width:
        dcg[:, 1:] = np.add.accumulate(rel * discounts(width), axis=1)
    has_gt = n_gt > 0
    n_gt_f = n_gt.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        c = min(k, width)
        out[f"recall@{k}"] = np.divide(hits[:, c], n_gt_f, out=np.zeros(B), where=has_gt)
        m = np.minimum(n_gt, k)
        if cap is not None:
            m = np.minimum(m, cap)
        idcg = np.asarray(ideal_dcg(m), dtype=np.float64).reshape(B)
        out[f"ndcg@{k}"] = np.divide(dcg[:, c], idcg, out=np.zeros(B), where=idcg > 0)
        out[f"hr@{k}"] = ((hits[:, c] > 0) & has_gt).astype(np.float64)
    first = pos < n_items  # the ratios look at the first n_items parsed items (Judgement's definitions)
    n_first = np.minimum(lengths, n_items).astype(np.float64)
    in_cat = np.bincount(row[first & (codes != _CODE[OUT_OF_CATALOG])], minlength=B).astype(np.float64)
    out["catalog_hit_ratio"] = np.divide(in_cat, n_first, out=np.zeros(B), where=n_first > 0)
    valid = np.bincount(row[first & ((codes == _CODE[HIT]) | (codes == _CODE[MISS]))], minlength=B)
    out["valid_item_ratio"] = valid / float(n_items) if n_items else np.zeros(B)
    out["num_parsed"] = lengths.astype(np.float64)
    out["num_groundtruth"] = n_gt_f
    return {key: out[key] for key in metric_names(ks)}


def batch_mean(metrics: Mapping[str, np.ndarray]) -> dict[str, float]:
    """:func:`mean_metrics` of per-sample arrays (same left-to-right sums, so the same values) + ``num_samples``."""
    n = len(next(iter(metrics.values()))) if metrics else 0
    out = {key: float(np.add.accumulate(np.asarray(v, dtype=np.float64))[-1]) / n for key, v in metrics.items()} \
        if n else {}
    out["num_samples"] = float(n)
    return out


@dataclass
class BatchScores:
    """Scores of a batch: ``metrics`` (key -> (B,) array, :func:`ranking_metrics`' keys) and the judgement
    (``judged.ids`` / ``judged.status`` per sample, in list order)."""

    metrics: dict[str, np.ndarray]
    judged: BatchJudgement

    def mean(self) -> dict[str, float]:
        return batch_mean(self.metrics)

    def rows(self) -> list[dict[str, float]]:
        """One dict per sample, equal to ``ranking_metrics`` of that sample."""
        keys = list(self.metrics)
        columns = [self.metrics[k].tolist() for k in keys]
        return [dict(zip(keys, values)) for values in zip(*columns)]


def score_id_lists(
    id_lists: Sequence[Sequence[int | None]],
    groundtruths: Sequence[Iterable[int]],
    seens: Sequence[Iterable[int]] | None = None,
    ks: Sequence[int] = (5, 10, 15, 20),
    protocol: str = "packed",
    n_items: int = 20,
) -> BatchScores:
    """Score ranked lists of catalog ids (None = a line that matched no catalog item): the status rule
    (``rewards.judge.judge_ids``) then :func:`batch_ranking_metrics`."""
    check_scoring_options(ks, n_items)  # before any work: a bad option is a usage error, not a data error
    judged = judge_id_lists(id_lists, groundtruths, seens, n_items=n_items)
    return BatchScores(batch_ranking_metrics(judged, ks=ks, protocol=protocol, n_items=n_items), judged)


def score_texts(
    texts: Sequence[str],
    catalog: Catalog,
    groundtruths: Sequence[Iterable[int]],
    seens: Sequence[Iterable[int]] | None = None,
    ks: Sequence[int] = (5, 10, 15, 20),
    protocol: str = "packed",
    n_items: int = 20,
    require_year: bool = True,
) -> BatchScores:
    """Score completions: ``rewards.judge.match_texts`` (text -> id lists) then :func:`score_id_lists`, with the
    ground truths and seen ids mapped to ``Catalog.canonical_id`` (``rewards.judge.canonical_targets``)."""
    check_scoring_options(ks, n_items)
    groundtruths, seens = canonical_targets(catalog, groundtruths, seens)
    id_lists = match_texts(texts, catalog, require_year=require_year)
    return score_id_lists(id_lists, groundtruths, seens, ks=ks, protocol=protocol, n_items=n_items)
