"""Rank-GRPO (Zhu et al., ICLR 2026) on top of TRL's GRPOTrainer, plus the vanilla GRPO and GSPO baselines.

The spec is ``docs/methods.md`` §2. A completion is a ranked list of N items; Rank-GRPO treats every
rank k as its own "action":

* rank rewards r_ik (Eq. 8-9) come from ``rewards/`` (``judge`` + ``rank_rewards``, the matcher evaluation uses);
* rank-level advantages (Eq. 7): A_ik = (r_ik - mean_i' r_i'k) / (std_i' r_i'k + eps), over the G completions of a
  prompt, for every rank k separately;
* rank-level importance ratios (Eq. 6): w_ik = exp(mean over item k's tokens of log pi_theta - log pi_old), the
  ratio of the geometric means of the item's token probabilities;
* objective J = 1/(G N) sum_i sum_k min(w_ik A_ik, clip(w_ik, 1 - eps_low, 1 + eps_high) A_ik) - beta KL.

Which tokens make item k: ``trainers.token_map`` (byte spans of the same parse that produced the rewards).

Design decisions (documented in the config help too):

* **Tail rank.** Tokens overlapping no item AFTER the last counted item (the first N parsed items) -- the EOS
  token, text after item N, items beyond N, the trailing newline -- form an extra rank, column N of the (B, N+1)
  reward/advantage matrices. Length shaping lives there: ``overflow_penalty`` (eps_o) when there is any
  non-whitespace text after item N, ``early_stop_penalty`` (eps_u) when the completion ended with EOS having fewer
  than N items, ``eos_bonus`` (released code only, 0 by default) when it ended with EOS right after exactly N items.
  ``length_shaping="reward"`` (paper): the tail reward is normalised across the group like any rank (Eq. 7);
  ``"advantage"`` (released code): the constants are used directly as the tail's advantage (unnormalised).
* Tokens before/between items (preamble, blank lines, yearless lines, newlines not merged into an item token) carry
  no policy gradient (advantage 0); they still carry the KL term.
* **Loss normalisation.** ``"paper"``: -(1/(B N)) sum_i sum_{k<=N+1} surrogate_ik over the local micro-batch (a rank
  without tokens contributes 0; the tail is an extra term, the divisor stays N as in the paper's 1/(G N));
  ``"token"`` (released code, TRL's bnpo): each rank weighted by its token count, divided by the total number of
  rank tokens. Both are divided by the gradient-accumulation steps like TRL's own losses.
* **Eq. 7 eps** ``adv_eps = 1e-4`` (TRL's own constant for GRPO advantages, so the GRPO baseline and Rank-GRPO share
  it); std is the unbiased (Bessel) group std as in TRL; a rank whose G rewards are all equal gets advantage 0
  exactly (never NaN, never a rounding residue).
* **KL.** k3 estimator exp(ref - logp) - (ref - logp) - 1, averaged over completion tokens per sequence, then over
  sequences, times beta.

The equations are the method layer's (``trainers.core_algos``: ``rank_zscore``, the ``item`` ratio, the
``ppo_clip`` policy loss, the ``paper`` / ``token`` aggregations, ``k3_kl``); rewards go through TRL's reward-function
path (``methods.rank_grpo.list_judge``). Classes: ``ListGRPOTrainer`` -- the GRPO / GSPO baselines, TRL's own advantages and
loss on the sequence reward; ``RankGRPOTrainer`` -- adds the rank advantages and the item-level loss.
``trainer_class(algorithm)`` picks one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from methods.rank_grpo.list_judge import ListJudge, length_shaping_func, rank_reward_sum_func, sequence_reward_func
from rewards.rank_rewards import batch_rank_rewards, parse_scheme
from trainers.base import RecRLConfig, RecRLTrainer
from trainers.core_algos import get_adv_est
from trainers.token_map import assign_tokens_to_items, sequence_byte_lengths_slow

RANK_NORMALIZATIONS = ("paper", "token")
RANK_ADVANTAGES = ("rank_zscore", "rank_center")
LENGTH_SHAPINGS = ("reward", "advantage")


@dataclass(frozen=True)
class Algorithm:
    """What an ``algorithm`` value selects: ``rank_level`` (per-rank rewards, advantages and item ratios:
    ``RankGRPOTrainer``; else TRL's sequence-level loss: ``ListGRPOTrainer``), its default ``reward_func`` and the
    presets of the GRPOConfig fields left at None (``RankGRPOConfig.__post_init__``)."""

    rank_level: bool
    reward_func: str
    presets: dict


#   rank_grpo: the released code clips the ITEM ratios at [1 - 0.06, 1 + 0.08] (docs/methods.md §2.9).
#   grpo: the paper's GRPO clip 0.2 / 0.26, token ratios, per-sequence mean ("grpo" loss).
#   gspo: sequence-level ratio, clip 3e-4 / 4e-4 (GSPO paper), per-sequence loss.
ALGORITHM_TABLE = {
    "rank_grpo": Algorithm(True, "exp_inf", dict(epsilon=0.06, epsilon_high=0.08, loss_type="grpo",
                                                 importance_sampling_level="token")),
    "grpo": Algorithm(False, "ndcg", dict(epsilon=0.2, epsilon_high=0.26, loss_type="grpo",
                                          importance_sampling_level="token")),
    "gspo": Algorithm(False, "ndcg", dict(epsilon=3e-4, epsilon_high=4e-4, loss_type="grpo",
                                          importance_sampling_level="sequence")),
}
ALGORITHMS = tuple(ALGORITHM_TABLE)


@dataclass
class RankGRPOConfig(RecRLConfig):
    """``RecRLConfig`` plus Rank-GRPO's options. Fields set to None take the ``algorithm``'s preset."""

    resume_identity_fields: ClassVar[tuple[str, ...]] = ("algorithm", "reward_func")

    algorithm: str = field(
        default="rank_grpo",
        metadata={"help": "rank_grpo (per-rank rewards/advantages/ratios), grpo (sequence reward, token ratios) or "
                  "gspo (sequence reward, sequence ratio).", "choices": list(ALGORITHMS)},
    )
    reward_func: str | None = field(
        default=None,
        metadata={"help": "Rank reward scheme exp_inf (default for rank_grpo) | exp_<Gamma> | log; for grpo/gspo the "
                  "sequence reward: ndcg (default) or a rank scheme (its rewards summed over ranks)."},
    )
    rank_normalization: str = field(
        default="paper",
        metadata={"help": "paper: 1/(B N) mean over ranks; token: ranks weighted by token count (released code).",
                  "choices": list(RANK_NORMALIZATIONS)},
    )
    rank_advantage: str = field(
        default="rank_zscore",
        metadata={"help": "rank_zscore (paper, Eq. 7): (r - group mean) / group std per rank; rank_center (a "
                  "deviation): r - group mean, so a discounted reward_func (log) keeps rank 1 above rank 20.",
                  "choices": list(RANK_ADVANTAGES)},
    )
    length_shaping: str = field(
        default="reward",
        metadata={"help": "reward (paper): penalties are the tail rank's reward, normalised per group like any "
                  "rank; advantage (released code): penalties added to the tail tokens' advantage.",
                  "choices": list(LENGTH_SHAPINGS)},
    )
    overflow_penalty: float = field(
        default=-0.1, metadata={"help": "eps_o: non-whitespace text after item N (on the tail rank)."})
    early_stop_penalty: float = field(
        default=-0.1, metadata={"help": "eps_u: EOS with fewer than N items (on the tail rank)."})
    eos_bonus: float = field(
        default=0.0, metadata={"help": "Released code's undocumented bonus for EOS right after exactly N items."})
    adv_eps: float = field(default=1e-4, metadata={"help": "eps of Eq. 7 (TRL's constant for GRPO advantages)."})
    # GRPOConfig fields whose default depends on the algorithm (None = preset, see ALGORITHM_TABLE).
    epsilon: float | None = field(
        default=None, metadata={"help": "Lower clip. Default: rank_grpo 0.06 (released item-ratio clip), grpo 0.2, "
                                "gspo 3e-4."})
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clip. Default: rank_grpo 0.08, grpo 0.26, gspo 4e-4."})
    loss_type: str | None = field(
        default=None, metadata={"help": "TRL loss for grpo/gspo (default 'grpo'); ignored by rank_grpo."})
    importance_sampling_level: str | None = field(
        default=None, metadata={"help": "token (grpo) or sequence (gspo); ignored by rank_grpo (item level)."})
    beta: float = field(default=1e-3, metadata={"help": "KL coefficient (paper: 1e-3)."})

    def __post_init__(self):
        self.check_choices(algorithm=ALGORITHMS, rank_normalization=RANK_NORMALIZATIONS,
                           length_shaping=LENGTH_SHAPINGS, rank_advantage=RANK_ADVANTAGES)
        if not self.adv_eps > 0:
            raise ValueError(f"adv_eps must be > 0, got {self.adv_eps}")
        algorithm = ALGORITHM_TABLE[self.algorithm]
        if self.reward_func is None:
            self.reward_func = algorithm.reward_func
        if algorithm.rank_level and self.reward_func == "ndcg":
            raise ValueError("rank_grpo needs a rank-level reward (exp_inf | exp_<Gamma> | log), not 'ndcg'")
        if self.reward_func != "ndcg":
            parse_scheme(self.reward_func)  # fail early on a typo
        for name, value in algorithm.presets.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if algorithm.rank_level:
            unsupported = {
                "top_entropy_quantile": (self.top_entropy_quantile, 1.0),
                "off_policy_mask_threshold": (self.off_policy_mask_threshold, None),
                "delta": (self.delta, None),
                "entropy_coef": (self.entropy_coef, 0.0),
            }
            bad = [k for k, (v, ok) in unsupported.items() if v != ok]
            if bad:
                raise ValueError(f"rank_grpo does not implement TRL's {bad}; leave them at their defaults")
        super().__post_init__()


# ------------------------------------------------------------------------------------------------ equations
def build_advantages(rank_rewards: torch.Tensor, tail_rewards: torch.Tensor, num_generations: int, eps: float,
                     length_shaping: str, estimator: str = "rank_zscore") -> torch.Tensor:
    """(B, N+1) advantages: ``estimator`` (Eq. 7's ``rank_zscore``, or ``rank_center``) on the N ranks; the tail
    column is the same estimator on the tail rewards ("reward" mode) or the raw length-shaping constants
    ("advantage" mode, released code)."""
    rank_adv = get_adv_est(estimator)
    if length_shaping == "reward":
        return rank_adv(torch.cat([rank_rewards, tail_rewards[:, None]], dim=1), num_generations, eps)
    if length_shaping == "advantage":
        return torch.cat([rank_adv(rank_rewards, num_generations, eps), tail_rewards[:, None]], dim=1)
    raise ValueError(f"length_shaping must be one of {LENGTH_SHAPINGS}, got {length_shaping!r}")


def mark_tail(item_index: torch.Tensor, mask: torch.Tensor, n_items: int) -> torch.Tensor:
    """Give index ``n_items`` (the tail rank) to unassigned completion tokens after the last counted item's last
    token (all completion tokens when no item was parsed). Preamble/between-item tokens stay -1."""
    T = item_index.size(1)
    pos = torch.arange(T, device=item_index.device).expand_as(item_index)
    last = torch.where(item_index >= 0, pos, torch.full_like(pos, -1)).amax(dim=1, keepdim=True)
    tail = (item_index < 0) & (pos > last) & (mask != 0)
    return torch.where(tail, torch.full_like(item_index, n_items), item_index)


# ------------------------------------------------------------------------------------------------ trainers
class ListGRPOTrainer(RecRLTrainer):
    """GRPO / GSPO on generated recommendation lists: the sequence reward (``args.reward_func``: ``ndcg`` or a rank
    scheme summed) through TRL's reward path, TRL's own group advantages and loss.

    Needs dataset columns ``prompt`` (chat list), ``groundtruth`` and ``seen`` (catalog ids) and a catalog
    (``catalog=`` or ``args.catalog_path``).
    """

    supports_item_aware_decoding = True

    def __init__(self, model, args: RankGRPOConfig, *a, **kw):
        if not isinstance(args, RankGRPOConfig):
            raise TypeError(f"{type(self).__name__} needs a RankGRPOConfig")
        super().__init__(model, args, *a, **kw)
        self.list_judge.eos_ids = self._eos_ids
        self.n_items = args.n_items

    def build_reward_funcs(self) -> list:
        self.list_judge = ListJudge(self.catalog, self.args, self.require_year, self.decode_completion, set())
        return [sequence_reward_func(self.list_judge, self.args.reward_func)]


class RankGRPOTrainer(ListGRPOTrainer):
    """Rank-GRPO: per-rank rewards (Eq. 8-9), rank advantages (Eq. 7), item-level ratios (Eq. 6) and the
    1/(G N) clipped objective: TRL's ``_generate_and_score_completions`` overridden for the rank advantages, and
    the pieces of the shared loss template (item units, the ``rank_normalization`` aggregation)."""

    def __init__(self, model, args: RankGRPOConfig, *a, **kw):
        if isinstance(args, RankGRPOConfig) and not ALGORITHM_TABLE[args.algorithm].rank_level:
            raise ValueError(f"RankGRPOTrainer runs algorithm rank_grpo; use ListGRPOTrainer for {args.algorithm!r} "
                             "(trainer_class picks it)")
        super().__init__(model, args, *a, **kw)

    def build_reward_funcs(self) -> list:
        super().build_reward_funcs()
        return [rank_reward_sum_func(self.list_judge, self.args.reward_func), length_shaping_func(self.list_judge)]

    def _token_item_index(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor, spans,
                          completion_ids_list: list[list[int]]) -> torch.Tensor:
        if self._byte_table is not None:
            idx = assign_tokens_to_items(completion_ids, completion_mask, spans, self._byte_table)
        else:  # SLOW fallback for non-byte-level tokenizers
            T = completion_ids.size(1)
            lens = torch.zeros_like(completion_ids)
            for b, ids in enumerate(completion_ids_list):
                lens[b, : len(ids)] = torch.tensor(sequence_byte_lengths_slow(ids, self._tokenizer)[:T])
            idx = assign_tokens_to_items(completion_ids, completion_mask, spans, token_byte_lens=lens)
        return mark_tail(idx, completion_mask, self.n_items)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)  # runs the reward funcs -> self.list_judge.last
        scores, ids_list = self.list_judge.take()
        args, G, N = self.args, self.group_size, self.n_items
        device = self.accelerator.device
        rel = np.stack([s.rel for s in scores]) if scores else np.zeros((0, N))
        local_rank = torch.tensor(batch_rank_rewards(rel, args.reward_func, n_items=N), dtype=torch.float32,
                                  device=device)
        local_tail = torch.tensor([s.tail_reward for s in scores], dtype=torch.float32, device=device)
        item_index = self._token_item_index(output["completion_ids"], output["completion_mask"],
                                            [s.spans for s in scores], ids_list)
        rank_r = self.accelerator.gather(local_rank)  # (B_global, N)
        tail_r = self.accelerator.gather(local_tail)  # (B_global,)
        adv = build_advantages(rank_r, tail_r, G, args.adv_eps, args.length_shaping, args.rank_advantage)
        output["advantages"] = self.local_rows(adv, len(scores))  # (B, N+1): batch first, split like TRL's tensors
        output["item_index"] = item_index  # (B, T)

        metrics = {f"rewards/pos_{k + 1}/mean": rank_r[:, k].mean().item() for k in range(N)}
        metrics["rewards/tail/mean"] = tail_r.mean().item()
        grouped = rank_r.view(-1, G, N)
        metrics["frac_rank_zero_std"] = (grouped.amax(1) == grouped.amin(1)).float().mean().item()
        self.log_metrics(metrics)
        return output

    # the loss template's pieces (RecRLTrainer._compute_loss): item units, the paper / token aggregation
    policy_loss = "ppo_clip"
    kl_metric = "token"  # k3 averaged over the policy tokens
    unit_ratio_metric = "item_ratio/mean"

    def policy_units(self, inputs) -> tuple[str, dict]:
        """Eq. 6's items: ranks 0..N-1 and the tail rank N of ``item_index`` (one column of the advantages each)."""
        return "item", {"item_index": inputs["item_index"], "n_units": inputs["advantages"].size(1)}

    def loss_aggregation(self) -> tuple[str, dict]:
        """``paper`` (1/(B N), the tail an extra term) or ``token`` (ranks weighted by their token counts)."""
        return self.args.rank_normalization, {"n_units": self.n_items}


def trainer_class(algorithm: str) -> type[ListGRPOTrainer]:
    """The trainer of an ``algorithm``: RankGRPOTrainer for rank_grpo, ListGRPOTrainer for grpo / gspo."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    return RankGRPOTrainer if ALGORITHM_TABLE[algorithm].rank_level else ListGRPOTrainer
