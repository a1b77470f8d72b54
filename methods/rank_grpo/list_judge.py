"""Rewards of a generated recommendation list, as TRL reward functions.

A completion is judged ONCE per generation batch (``ListJudge``, a ``trainers.reward_adapter.BatchJudge``: decoded
from its token ids, parsed and matched with the one matcher in ``rewards/``); every reward function of the batch
reads that judgement, so TRL's own reward path
(``reward_funcs``: per-function ``rewards/<name>/mean`` logs, weights, NaN handling) carries the scalar rewards:

* ``ndcg`` -- NDCG@N of the list (the GRPO / GSPO baselines' sequence reward);
* ``rank_<scheme>`` -- the rank rewards of ``rewards.rank_rewards`` summed over the N ranks (Rank-GRPO logs it; its
  advantages use the per-rank values, see ``methods.rank_grpo.trainer``);
* ``length_shaping`` -- the tail rank's penalties (eps_o / eps_u / EOS bonus, docs/methods.md §2.6).

List statistics (hit rate, parsed items, catalog-hit and valid-item ratios, overflow / early-stop / EOS rates, NDCG)
are logged once per completion through TRL's ``log_metric``, so their means are exact over all processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from rewards.judge import judge
from rewards.rank_rewards import batch_rank_rewards, batch_sequence_ndcg
from trainers.reward_adapter import BatchJudge, RewardTerm
from trainers.token_map import item_byte_spans


@dataclass
class CompletionScore:
    """Everything the list trainers need from one completion (computed from the byte-exact decoded text)."""

    text: str
    rel: np.ndarray  # (N,) strict relevance of the first N parsed items, zero-padded
    spans: list[tuple[int, int]]  # byte spans of the first N parsed items
    n_parsed: int  # all parsed items (may exceed N)
    n_groundtruth: int
    overflow: bool  # non-whitespace text after item N
    ended_with_eos: bool
    tail_reward: float  # length shaping (eps_o / eps_u / eos bonus)
    catalog_ratio: float  # Judgement.catalog_hit_ratio(N): the one definition evaluation uses too
    valid_ratio: float  # Judgement.valid_item_ratio(N)


def length_shaping_reward(n_parsed: int, overflow: bool, ended_with_eos: bool, n_items: int,
                          overflow_penalty: float, early_stop_penalty: float, eos_bonus: float) -> float:
    """The tail rank's reward: eps_o if overflow, + eps_u if EOS with < N items, + bonus if EOS after exactly N."""
    r = 0.0
    if overflow:
        r += overflow_penalty
    if ended_with_eos and n_parsed < n_items:
        r += early_stop_penalty
    if ended_with_eos and n_parsed == n_items and not overflow:
        r += eos_bonus
    return r


def score_completion(text: str, catalog, groundtruth: Sequence[int], seen: Sequence[int], ended_with_eos: bool,
                     n_items: int = 20, require_year: bool = True, overflow_penalty: float = -0.1,
                     early_stop_penalty: float = -0.1, eos_bonus: float = 0.0) -> CompletionScore:
    """Judge one completion with the shared matcher and compute its length-shaping reward."""
    j = judge(text, catalog, list(groundtruth or []), list(seen or []), n_items=n_items, require_year=require_year)
    counted = j.items[:n_items]
    overflow = len(j.items) >= n_items and bool(text[counted[-1].end:].strip())
    n = len(j.items)
    tail = length_shaping_reward(n, overflow, ended_with_eos, n_items, overflow_penalty, early_stop_penalty,
                                 eos_bonus)
    return CompletionScore(text, j.rel_at(n_items), item_byte_spans(text, counted), n, j.n_groundtruth, overflow,
                           ended_with_eos, tail, j.catalog_hit_ratio(n_items), j.valid_item_ratio(n_items))


def sequence_rewards(rel: np.ndarray, n_groundtruth: Sequence[int], scheme: str, n_items: int) -> np.ndarray:
    """(B,) sequence reward: NDCG@N (``ndcg``), or a rank scheme's rewards summed over the ranks."""
    if scheme == "ndcg":
        return batch_sequence_ndcg(rel, np.asarray(n_groundtruth), n_items=n_items)
    return batch_rank_rewards(rel, scheme, n_items=n_items).sum(axis=1)


class ListJudge(BatchJudge):
    """Judges the completions of one generation batch once (``trainers.reward_adapter.BatchJudge``); its terms are
    the sequence reward (named after its scheme), ``rank_<scheme>`` and ``length_shaping``.

    ``args`` is read at call time (``n_items``, the penalties, ``reward_func``); ``require_year`` is resolved once by
    the trainer (``rewards.catalog.resolve_require_year``). ``decode`` maps completion token ids to the exact text
    (the trainer's byte table), ``eos_ids`` the ids that end a completion.
    """

    def __init__(self, catalog, args, require_year: bool, decode: Callable[[list[int]], str], eos_ids: set[int]):
        self.catalog, self.args, self.require_year = catalog, args, require_year
        self.decode, self.eos_ids = decode, eos_ids

    def judge(self, completion_ids, columns, log_metric=None) -> list[CompletionScore]:
        groundtruth, seen = columns.get("groundtruth"), columns.get("seen")
        if groundtruth is None:
            raise KeyError("the dataset needs a `groundtruth` column (catalog ids); keep remove_unused_columns=False")
        a = self.args
        scores = []
        for ids, gt, sn in zip(completion_ids, groundtruth, seen or [None] * len(completion_ids), strict=True):
            ids = list(ids)
            scores.append(score_completion(
                self.decode(ids), self.catalog, gt, sn or [], ended_with_eos=bool(ids) and ids[-1] in self.eos_ids,
                n_items=a.n_items, require_year=self.require_year, overflow_penalty=a.overflow_penalty,
                early_stop_penalty=a.early_stop_penalty, eos_bonus=a.eos_bonus))
        if log_metric is not None:
            self._log(scores, log_metric)
        return scores

    def value(self, term: str, scores: list[CompletionScore]):
        a = self.args
        rel = np.stack([s.rel for s in scores]) if scores else np.zeros((0, a.n_items))
        if term == "length_shaping":
            return [s.tail_reward for s in scores]
        if term.startswith("rank_"):  # Rank-GRPO's rank rewards summed (the scheme of args.reward_func)
            return batch_rank_rewards(rel, a.reward_func, n_items=a.n_items).sum(axis=1)
        return sequence_rewards(rel, [s.n_groundtruth for s in scores], term, a.n_items)

    def _log(self, scores: list[CompletionScore], log_metric) -> None:
        N = self.args.n_items
        rel = np.stack([s.rel for s in scores]) if scores else np.zeros((0, N))
        ndcg = batch_sequence_ndcg(rel, np.asarray([s.n_groundtruth for s in scores]), n_items=N)
        for s, nd in zip(scores, ndcg):
            for name, value in (("hit_rate", s.rel.mean()), ("items/counted", min(s.n_parsed, N)),
                                ("items/parsed", s.n_parsed), ("items/catalog_ratio", s.catalog_ratio),
                                ("items/valid_ratio", s.valid_ratio), ("length/overflow_rate", s.overflow),
                                ("length/early_stop_rate", s.ended_with_eos and s.n_parsed < N),
                                ("length/eos_rate", s.ended_with_eos), ("ndcg", nd)):
                log_metric(name, float(value))


def sequence_reward_func(list_judge: ListJudge, scheme: str) -> RewardTerm:
    """GRPO / GSPO: ``ndcg`` (NDCG@N) or a rank scheme summed over ranks, named after the scheme."""
    return RewardTerm(scheme, list_judge)


def rank_reward_sum_func(list_judge: ListJudge, scheme: str) -> RewardTerm:
    """Rank-GRPO's rank rewards summed over the N ranks (``args.reward_func`` read at call time), named
    ``rank_<scheme>``."""
    return RewardTerm(f"rank_{scheme}", list_judge)


def length_shaping_func(list_judge: ListJudge) -> RewardTerm:
    """The tail rank's length-shaping reward (eps_o / eps_u / EOS bonus)."""
    return RewardTerm("length_shaping", list_judge)
