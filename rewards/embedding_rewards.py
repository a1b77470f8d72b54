"""Rewards of a recommender that scores the whole catalog (RecPO / R²ec, docs/methods.md §3.3, Eq. 5).

Scores s(u, v) = cos(h_u, h_v) / tau for every catalog item v; the user's history items are excluded (never
recommendable, never counted as ranked above the target).

* ``target_ranks`` -- 1-based rank of the target among the non-excluded items; ties broken by catalog index (the
  order ``torch.sort(..., stable=True)`` gives, which ``top_k_items`` uses too, so a reward and an evaluation agree).
* ``rank_ndcg`` -- R_d: NDCG of a single target at rank r, 1 / log2(r + 1), 0 past the cut-off (released: 1000).
* ``target_softmax_prob`` -- R_c: exp(s_target) / sum over non-excluded v of exp(s_v).
"""
from __future__ import annotations

import torch


def cosine_scores(users: torch.Tensor, items: torch.Tensor, tau: float) -> torch.Tensor:
    """(B, d) user vectors, (V, d) item vectors -> (B, V) cosine similarities / tau."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    u = torch.nn.functional.normalize(users, dim=-1)
    v = torch.nn.functional.normalize(items, dim=-1)
    return u @ v.T / tau


def _check(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None) -> None:
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores (B, V) and targets (B,) expected, got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")
    if exclude is not None and exclude.shape != scores.shape:
        raise ValueError(f"exclude must be (B, V) like scores, got {tuple(exclude.shape)}")
    if exclude is not None and exclude.gather(1, targets[:, None]).any():
        raise ValueError("a target is among its own excluded (history) items")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) scores, (B,) target column indices, (B, V) bool exclusions -> (B,) long 1-based ranks.

    rank = 1 + #{v allowed: s_v > s_t} + #{v allowed, v < t: s_v == s_t}.
    """
    _check(scores, targets, exclude)
    s_t = scores.gather(1, targets[:, None])
    idx = torch.arange(scores.size(1), device=scores.device)[None, :]
    above = (scores > s_t) | ((scores == s_t) & (idx < targets[:, None]))
    if exclude is not None:
        above = above & ~exclude
    return 1 + above.sum(dim=1)


def rank_ndcg(ranks: torch.Tensor, cutoff: int | None = 1000) -> torch.Tensor:
    """R_d: 1 / log2(rank + 1) for rank <= cutoff, else 0 (a single relevant item: IDCG = 1). (B,) -> (B,) float."""
    if cutoff is not None and cutoff < 1:
        raise ValueError(f"cutoff must be >= 1 or None, got {cutoff}")
    r = ranks.double()
    out = 1.0 / torch.log2(r + 1.0)
    if cutoff is not None:
        out = torch.where(ranks <= cutoff, out, torch.zeros_like(out))
    return out


def target_softmax_prob(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """R_c: softmax probability of the target over the non-excluded items. (B, V), (B,) -> (B,)."""
    _check(scores, targets, exclude)
    s = scores.double()
    if exclude is not None:
        s = s.masked_fill(exclude, float("-inf"))
    return torch.softmax(s, dim=1).gather(1, targets[:, None]).squeeze(1)


def top_k_items(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) -> (B, min(k, V)) column indices, best first, excluded items never returned before allowed ones
    (ties by index: the order ``target_ranks`` assumes)."""
    s = scores if exclude is None else scores.masked_fill(exclude, float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    return order[:, : min(k, scores.size(1))]
