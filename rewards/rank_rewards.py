"""Rank-level rewards (Rank-GRPO Eq. 8-9) and the sequence-level NDCG reward.

From the strict relevance vector ``rel[1..N]`` (zero-padded / cut to N):

* ``exp_inf``: r_k = rel_k;
* ``exp_<G>`` (G > 0, e.g. ``exp_2``, ``exp_1.5``): r_k = sum_{j>=k} rel_j / G^(j-k); with G < 1 the weights
  G^-(j-k) GROW with the distance, so N is capped where the largest weight G^-(N-1) would pass 2^53 (beyond it
  rel_k no longer changes r_k in float64, and a few more ranks overflow to inf and NaN): a ValueError naming
  the largest N the scheme allows, never a NaN reward;
* ``log``: r_k = sum_{j=k}^{N} rel_j / log2(j+1) (the causal tail of DCG@N);
* ``sequence_ndcg``: one scalar, DCG@N / IDCG@N with IDCG over min(|GT|, N) (vanilla GRPO).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .metrics import discounts, ideal_dcg

__all__ = [
    "VALID_SCHEMES",
    "RewardScheme",
    "batch_rank_rewards",
    "batch_sequence_ndcg",
    "check_n_items",
    "max_items_for_gamma",
    "parse_scheme",
    "rank_rewards",
    "sequence_ndcg",
]

VALID_SCHEMES = ("exp_inf", "exp_<Gamma> (float Gamma > 0, e.g. exp_2, exp_1.5)", "log")
_EXP = re.compile(r"^exp_(?P<g>inf|\d+(?:\.\d*)?|\.\d+)$")


@dataclass(frozen=True)
class RewardScheme:
    name: str
    kind: str  # "exp" or "log"
    gamma: float | None = None  # for "exp": math.inf for exp_inf


def parse_scheme(name: str) -> RewardScheme:
    """``"exp_inf"`` / ``"exp_<Gamma>"`` / ``"log"`` -> :class:`RewardScheme`; ValueError otherwise."""
    if isinstance(name, RewardScheme):
        return name
    s = str(name).strip().lower()
    if s == "log":
        return RewardScheme("log", "log")
    m = _EXP.match(s)
    if m:
        g = math.inf if m.group("g") == "inf" else float(m.group("g"))
        if g > 0 and not math.isnan(g):
            return RewardScheme(s, "exp", g)
    raise ValueError(f"unknown rank-reward scheme {name!r}; valid: {', '.join(VALID_SCHEMES)}")


#: The largest weight an ``exp_<G>`` scheme with G < 1 may reach, G^-(N-1): past 2^53 a rank's own relevance is
#: below float64 resolution of its reward (and squares in the advantage z-score approach float32's range).
MAX_EXP_WEIGHT = 2.0**53


def check_n_items(n_items, name: str = "n_items") -> int:
    """``n_items`` as an int >= 0; ValueError (naming ``name``) for a negative number, a bool or a non-integer."""
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 0:
        raise ValueError(f"{name} must be an int >= 0, got {n_items!r}")
    return int(n_items)


def max_items_for_gamma(gamma: float) -> int | None:
    """The largest N for which ``exp_<gamma>`` keeps every weight G^-(j-k) <= MAX_EXP_WEIGHT (None: no limit)."""
    if gamma >= 1.0:
        return None
    return int(math.floor(math.log(MAX_EXP_WEIGHT) / math.log(1.0 / gamma))) + 1


def _check_exp_length(sch: RewardScheme, n: int) -> None:
    limit = max_items_for_gamma(sch.gamma)
    if limit is not None and n > limit:
        raise ValueError(f"rank-reward scheme {sch.name!r} on {n} items: with Gamma < 1 the weight Gamma^-(N-1) grows "
                         f"past 2^53 beyond N = {limit} items (rewards would lose precision, then overflow to "
                         f"inf/NaN); use Gamma >= 1 or n_items <= {limit}")


@lru_cache(maxsize=64)
def _exp_matrix(gamma: float, n: int) -> np.ndarray:
    """W[j, k] = gamma^-(j-k) for j >= k else 0, so r = rel @ W (numerically stable for any N)."""
    j = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    d = j - k
    w = np.where(d >= 0, np.power(float(gamma), -np.clip(d, 0, None).astype(np.float64)), 0.0)
    w.flags.writeable = False
    return w


def _fit(rel: np.ndarray, n: int) -> np.ndarray:
    rel = np.asarray(rel, dtype=np.float64)
    L = rel.shape[-1]
    if L == n:
        return rel
    if L > n:
        return rel[..., :n]
    pad = [(0, 0)] * (rel.ndim - 1) + [(0, n - L)]
    return np.pad(rel, pad)


def batch_rank_rewards(rel_matrix: np.ndarray, scheme: str | RewardScheme, n_items: int | None = None) -> np.ndarray:
    """Vectorised rank rewards for a ``(B, N)`` relevance matrix -> ``(B, N)`` (``N = n_items`` if given,
    rows zero-padded / cut to it)."""
    sch = parse_scheme(scheme)
    rel = np.asarray(rel_matrix, dtype=np.float64)
    if rel.ndim != 2:
        raise ValueError(f"rel_matrix must be 2-D (B, N), got shape {rel.shape}")
    n = rel.shape[1] if n_items is None else check_n_items(n_items)
    if sch.kind == "exp":
        _check_exp_length(sch, n)
    rel = _fit(rel, n)
    if n == 0:
        return rel.copy()
    if sch.kind == "log":
        weighted = rel * discounts(n)
        return np.cumsum(weighted[:, ::-1], axis=1)[:, ::-1].copy()  # reverse cumulative sum
    if math.isinf(sch.gamma):
        return rel.copy()
    if sch.gamma == 1.0:
        return np.cumsum(rel[:, ::-1], axis=1)[:, ::-1].copy()
    return rel @ _exp_matrix(sch.gamma, n)


def rank_rewards(rel: np.ndarray, scheme: str | RewardScheme, n_items: int = 20) -> np.ndarray:
    """Per-rank rewards ``(n_items,)`` of one completion's relevance vector (zero-padded / cut)."""
    rel = np.asarray(rel, dtype=np.float64).reshape(-1)
    return batch_rank_rewards(rel[None, :], scheme, n_items=n_items)[0]


def batch_sequence_ndcg(rel_matrix: np.ndarray, n_groundtruth, n_items: int | None = None) -> np.ndarray:
    """DCG@N / IDCG@N per row, IDCG over min(|GT|, N) (0 where |GT| = 0)."""
    rel = np.asarray(rel_matrix, dtype=np.float64)
    if rel.ndim != 2:
        raise ValueError(f"rel_matrix must be 2-D (B, N), got shape {rel.shape}")
    n = rel.shape[1] if n_items is None else check_n_items(n_items)
    rel = _fit(rel, n)
    dcg = rel @ discounts(n) if n else np.zeros(rel.shape[0])
    m = np.minimum(np.broadcast_to(np.asarray(n_groundtruth, dtype=np.int64), dcg.shape), n)
    idcg = np.asarray(ideal_dcg(m), dtype=np.float64).reshape(dcg.shape)
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def sequence_ndcg(rel: np.ndarray, n_groundtruth: int, n_items: int = 20) -> float:
    """One scalar: DCG@N / IDCG@N with IDCG over min(|GT|, N)."""
    rel = np.asarray(rel, dtype=np.float64).reshape(-1)
    return float(batch_sequence_ndcg(rel[None, :], [n_groundtruth], n_items=n_items)[0])
