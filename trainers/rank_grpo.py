"""Rank-GRPO (Zhu et al., ICLR 2026) on top of TRL's GRPOTrainer, plus the vanilla GRPO and GSPO baselines.

The spec is ``../shared/docs/METHODS.md`` §2. A completion is a ranked list of N items; Rank-GRPO treats every
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
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from trl import GRPOConfig, GRPOTrainer

from rewards.judge import judge
from rewards.rank_rewards import batch_rank_rewards, batch_sequence_ndcg

from trainers.token_map import (
    ByteTable,
    assign_tokens_to_items,
    build_byte_table,
    decode_bytes,
    item_byte_spans,
    sequence_byte_lengths_slow,
)

logger = logging.getLogger(__name__)

ALGORITHMS = ("rank_grpo", "grpo", "gspo")
RANK_NORMALIZATIONS = ("paper", "token")
LENGTH_SHAPINGS = ("reward", "advantage")

# Algorithm presets for fields left at None (see RankGRPOConfig.__post_init__).
#   rank_grpo: the released code clips the ITEM ratios at [1 - 0.06, 1 + 0.08] (METHODS.md §2).
#   grpo: the paper's GRPO clip 0.2 / 0.26, token ratios, per-sequence mean ("grpo" loss).
#   gspo: sequence-level ratio, clip 3e-4 / 4e-4 (GSPO paper), per-sequence loss.
_PRESETS = {
    "rank_grpo": dict(epsilon=0.06, epsilon_high=0.08, loss_type="grpo", importance_sampling_level="token"),
    "grpo": dict(epsilon=0.2, epsilon_high=0.26, loss_type="grpo", importance_sampling_level="token"),
    "gspo": dict(epsilon=3e-4, epsilon_high=4e-4, loss_type="grpo", importance_sampling_level="sequence"),
}


@dataclass
class RankGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus Rank-GRPO's options. Fields set to None take the ``algorithm``'s preset."""

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
    n_items: int = field(default=20, metadata={"help": "N, the length of the recommendation list."})
    require_year: bool = field(
        default=True, metadata={"help": "Only `Title (Year)` lines are items (the paper's parse)."})
    rank_normalization: str = field(
        default="paper",
        metadata={"help": "paper: 1/(B N) mean over ranks; token: ranks weighted by token count (released code).",
                  "choices": list(RANK_NORMALIZATIONS)},
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
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompt-side truncation (preprocess.prompting.truncate_prompt) applied to the datasets "
                  "before training; the completion is never cut. None: no truncation."},
    )
    catalog_path: str | None = field(
        default=None,
        metadata={"help": "Catalog file (.json/.csv/.pkl read with a restricted unpickler); default: the processed "
                  "data set's catalog.json."},
    )
    # GRPOConfig fields whose default depends on the algorithm (None = preset, see _PRESETS).
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
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.rank_normalization not in RANK_NORMALIZATIONS:
            raise ValueError(f"rank_normalization must be one of {RANK_NORMALIZATIONS}, got {self.rank_normalization!r}")
        if self.length_shaping not in LENGTH_SHAPINGS:
            raise ValueError(f"length_shaping must be one of {LENGTH_SHAPINGS}, got {self.length_shaping!r}")
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if not self.adv_eps > 0:
            raise ValueError(f"adv_eps must be > 0, got {self.adv_eps}")
        if self.reward_func is None:
            self.reward_func = "exp_inf" if self.algorithm == "rank_grpo" else "ndcg"
        if self.algorithm == "rank_grpo" and self.reward_func == "ndcg":
            raise ValueError("rank_grpo needs a rank-level reward (exp_inf | exp_<Gamma> | log), not 'ndcg'")
        if self.reward_func != "ndcg":
            from rewards.rank_rewards import parse_scheme

            parse_scheme(self.reward_func)  # fail early on a typo
        for name, value in _PRESETS[self.algorithm].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must stay False: the rewards need the groundtruth/seen columns")
        if self.algorithm == "rank_grpo":
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


# ------------------------------------------------------------------------------------------------ scoring
@dataclass
class CompletionScore:
    """Everything Rank-GRPO needs from one completion (computed from the byte-exact decoded text)."""

    text: str
    rel: np.ndarray  # (N,) strict relevance of the first N parsed items, zero-padded
    spans: list[tuple[int, int]]  # byte spans of the first N parsed items
    n_parsed: int  # all parsed items (may exceed N)
    n_groundtruth: int
    overflow: bool  # non-whitespace text after item N
    ended_with_eos: bool
    tail_reward: float  # length shaping (eps_o / eps_u / eos bonus)
    catalog_ratio: float  # in-catalog parsed items / parsed items (0 when none)
    valid_ratio: float  # hit or miss among the first N positions / N


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
    rel = j.rel_at(n_items)
    n = len(j.items)
    catalog_ratio = float(j.in_catalog.mean()) if n else 0.0
    valid_ratio = float(j.valid[:n_items].sum()) / n_items
    tail = length_shaping_reward(n, overflow, ended_with_eos, n_items, overflow_penalty, early_stop_penalty,
                                 eos_bonus)
    return CompletionScore(text, rel, item_byte_spans(text, counted), n, j.n_groundtruth, overflow,
                           ended_with_eos, tail, catalog_ratio, valid_ratio)


def sequence_rewards(rel: np.ndarray, n_groundtruth: Sequence[int], scheme: str, n_items: int) -> np.ndarray:
    """(B,) sequence reward for grpo/gspo: NDCG@N, or a rank scheme's rewards summed over the ranks."""
    if scheme == "ndcg":
        return batch_sequence_ndcg(rel, np.asarray(n_groundtruth), n_items=n_items)
    return batch_rank_rewards(rel, scheme, n_items=n_items).sum(axis=1)


# ------------------------------------------------------------------------------------------------ equations
def rank_advantages(rank_rewards: torch.Tensor, num_generations: int, eps: float = 1e-4) -> torch.Tensor:
    """Eq. 7: A_ik = (r_ik - mean_g r_gk) / (std_g r_gk + eps), per prompt group and per rank column.

    ``rank_rewards`` (B, K) with groups as contiguous blocks of ``num_generations`` rows (TRL's order). std is the
    unbiased group std; a column whose G values are all equal gets exactly 0.
    """
    B, K = rank_rewards.shape
    if B % num_generations:
        raise ValueError(f"{B} rows are not a whole number of groups of {num_generations}")
    r = rank_rewards.double().view(-1, num_generations, K)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, unbiased=True) if num_generations > 1 else torch.zeros_like(mean)
    adv = (r - mean) / (std + eps)
    constant = (r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)).expand_as(adv)
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.view(B, K).to(rank_rewards.dtype)


def build_advantages(rank_rewards: torch.Tensor, tail_rewards: torch.Tensor, num_generations: int, eps: float,
                     length_shaping: str) -> torch.Tensor:
    """(B, N+1) advantages: Eq. 7 on the N ranks; the tail column is Eq. 7 on the tail rewards ("reward" mode) or
    the raw length-shaping constants ("advantage" mode, released code)."""
    if length_shaping == "reward":
        return rank_advantages(torch.cat([rank_rewards, tail_rewards[:, None]], dim=1), num_generations, eps)
    if length_shaping == "advantage":
        return torch.cat([rank_advantages(rank_rewards, num_generations, eps), tail_rewards[:, None]], dim=1)
    raise ValueError(f"length_shaping must be one of {LENGTH_SHAPINGS}, got {length_shaping!r}")


def mark_tail(item_index: torch.Tensor, mask: torch.Tensor, n_items: int) -> torch.Tensor:
    """Give index ``n_items`` (the tail rank) to unassigned completion tokens after the last counted item's last
    token (all completion tokens when no item was parsed). Preamble/between-item tokens stay -1."""
    T = item_index.size(1)
    pos = torch.arange(T, device=item_index.device).expand_as(item_index)
    last = torch.where(item_index >= 0, pos, torch.full_like(pos, -1)).amax(dim=1, keepdim=True)
    tail = (item_index < 0) & (pos > last) & (mask != 0)
    return torch.where(tail, torch.full_like(item_index, n_items), item_index)


def item_log_ratios(log_ratio: torch.Tensor, item_index: torch.Tensor, n_ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 (in log space): mean over item k's tokens of the token log-ratios -> ((B, K) mean, (B, K) counts).

    ``item_index`` (B, T) holds -1 (no rank) or 0..n_ranks-1. Ranks without tokens get log-ratio 0 and count 0.
    """
    B = log_ratio.size(0)
    idx = torch.where(item_index >= 0, item_index, torch.full_like(item_index, n_ranks))  # dump slot
    sums = log_ratio.new_zeros(B, n_ranks + 1).scatter_add(1, idx, log_ratio)
    counts = log_ratio.new_zeros(B, n_ranks + 1).scatter_add(1, idx, torch.ones_like(log_ratio))
    sums, counts = sums[:, :n_ranks], counts[:, :n_ranks]
    return sums / counts.clamp(min=1.0), counts


def clipped_surrogate(log_w: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """min(w A, clip(w, 1 - eps_low, 1 + eps_high) A) with w = exp(log_w)."""
    w = torch.exp(log_w)
    return torch.min(w * advantages, torch.clamp(w, 1.0 - eps_low, 1.0 + eps_high) * advantages)


def rank_policy_loss(surrogate: torch.Tensor, counts: torch.Tensor, n_items: int, normalization: str) -> torch.Tensor:
    """-J_policy of the micro-batch. paper: -(1/(B N)) sum_ik s_ik (ranks with tokens); token: -sum n_ik s_ik /
    sum n_ik."""
    present = (counts > 0).to(surrogate.dtype)
    if normalization == "paper":
        return -(surrogate * present).sum() / (surrogate.size(0) * n_items)
    if normalization == "token":
        return -(surrogate * counts).sum() / counts.sum().clamp(min=1.0)
    raise ValueError(f"rank_normalization must be one of {RANK_NORMALIZATIONS}, got {normalization!r}")


def k3_kl(per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref): exp(ref - logp) - (ref - logp) - 1."""
    d = ref_per_token_logps - per_token_logps
    return torch.exp(d) - d - 1.0


def sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's masked tokens, then over sequences."""
    m = mask.to(x.dtype)
    return ((x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)).mean()


def truncate_dataset_prompts(dataset, tokenizer, max_prompt_length: int):
    """Prompt-side truncation (preprocess.prompting.truncate_prompt) of a chat-format ``prompt`` column."""
    from preprocess.prompting import truncate_prompt

    if dataset is None or "prompt" not in getattr(dataset, "column_names", []):
        return dataset
    return dataset.map(lambda x: {"prompt": truncate_prompt(x["prompt"], tokenizer, max_prompt_length)},
                       desc=f"truncating prompts to {max_prompt_length} tokens")


# ------------------------------------------------------------------------------------------------ trainer
def _placeholder_reward(name: str):
    def reward(*args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("RankGRPOTrainer computes rewards in _calculate_rewards; this function is a placeholder")

    reward.__name__ = name
    return reward


class RankGRPOTrainer(GRPOTrainer):
    """TRL GRPOTrainer with Rank-GRPO's rank rewards/advantages/ratios (``args.algorithm="rank_grpo"``) or the
    GRPO/GSPO baselines scored with the same matcher (``"grpo"``/``"gspo"``: TRL's own advantages and loss).

    Needs dataset columns ``prompt`` (chat list), ``groundtruth`` and ``seen`` (catalog ids) and a catalog
    (``catalog=`` or ``args.catalog_path``).
    """

    def __init__(self, model, args: RankGRPOConfig, train_dataset=None, eval_dataset=None, processing_class=None,
                 catalog=None, **kwargs):
        if not isinstance(args, RankGRPOConfig):
            raise TypeError("RankGRPOTrainer needs a RankGRPOConfig")
        if "reward_funcs" in kwargs:
            raise ValueError("RankGRPOTrainer computes its own rewards (args.reward_func); do not pass reward_funcs")
        if catalog is None:
            if args.catalog_path is None:
                raise ValueError("RankGRPOTrainer needs a catalog: pass catalog= or set args.catalog_path")
            from rewards.catalog import load_catalog

            catalog = load_catalog(args.catalog_path)
        self.catalog = catalog
        if args.max_prompt_length is not None:
            if processing_class is None:
                raise ValueError("max_prompt_length needs processing_class (the tokenizer) to count prompt tokens")
            train_dataset = truncate_dataset_prompts(train_dataset, processing_class, args.max_prompt_length)
            if isinstance(eval_dataset, dict):
                eval_dataset = {k: truncate_dataset_prompts(v, processing_class, args.max_prompt_length)
                                for k, v in eval_dataset.items()}
            else:
                eval_dataset = truncate_dataset_prompts(eval_dataset, processing_class, args.max_prompt_length)
        name = f"rank_{args.reward_func}" if args.algorithm == "rank_grpo" else args.reward_func
        super().__init__(model=model, reward_funcs=[_placeholder_reward(name)], args=args,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         **kwargs)
        self.algorithm = args.algorithm
        self.n_items = args.n_items
        vocab = self.model.config.get_text_config().vocab_size
        try:
            self._byte_table: ByteTable | None = build_byte_table(self._tokenizer, vocab_size=vocab)
        except NotImplementedError as exc:
            logger.warning("%s -- using the SLOW per-sequence fallback (prefix decoding) for token->item maps", exc)
            self._byte_table = None
        self._eos_ids = set(self.eos_token_ids) | {self._tokenizer.pad_token_id}
        self._rank_stash: dict | None = None

    # ---------------------------------------------------------------------------------- rewards
    def _decode(self, ids: list[int]) -> str:
        if self._byte_table is not None:
            return decode_bytes(ids, self._byte_table)
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """Judge every completion from ITS TOKEN IDS (so the parse and the token map agree by construction); stash
        the local per-rank rewards and byte spans; return the gathered (B_global, 1) sequence reward."""
        args = self.args
        device = self.accelerator.device
        if "groundtruth" not in inputs[0]:
            raise KeyError("the dataset needs a `groundtruth` column (catalog ids); keep remove_unused_columns=False")
        scores = []
        for ids, x in zip(completion_ids_list, inputs, strict=True):
            ids = list(ids)
            scores.append(score_completion(
                self._decode(ids), self.catalog, x["groundtruth"], x.get("seen") or [],
                ended_with_eos=bool(ids) and ids[-1] in self._eos_ids, n_items=args.n_items,
                require_year=args.require_year, overflow_penalty=args.overflow_penalty,
                early_stop_penalty=args.early_stop_penalty, eos_bonus=args.eos_bonus))
        rel = np.stack([s.rel for s in scores]) if scores else np.zeros((0, args.n_items))
        n_gt = [s.n_groundtruth for s in scores]
        ndcg = batch_sequence_ndcg(rel, np.asarray(n_gt), n_items=args.n_items)
        if self.algorithm == "rank_grpo":
            rank_r = batch_rank_rewards(rel, args.reward_func, n_items=args.n_items)
            tail = np.array([s.tail_reward for s in scores], dtype=np.float64)
            seq = rank_r.sum(axis=1) + tail
        else:
            rank_r = None
            tail = None
            seq = sequence_rewards(rel, n_gt, args.reward_func, args.n_items)
        stats = np.array([[s.rel.mean(), min(s.n_parsed, args.n_items), s.n_parsed, s.catalog_ratio, s.valid_ratio,
                           float(s.overflow), float(s.ended_with_eos and s.n_parsed < args.n_items),
                           float(s.ended_with_eos), nd] for s, nd in zip(scores, ndcg)], dtype=np.float64)
        self._rank_stash = {
            "rank_rewards": None if rank_r is None else torch.tensor(rank_r, dtype=torch.float32, device=device),
            "tail_rewards": None if tail is None else torch.tensor(tail, dtype=torch.float32, device=device),
            "spans": [s.spans for s in scores],
            "completion_ids": [list(ids) for ids in completion_ids_list],
            "stats": torch.tensor(stats.reshape(len(scores), 9), dtype=torch.float32, device=device),
        }
        local = torch.tensor(seq, dtype=torch.float32, device=device).view(-1, 1)
        return self.accelerator.gather(local)

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
        output = super()._generate_and_score_completions(inputs)
        stash, self._rank_stash = self._rank_stash, None
        if stash is None:
            raise RuntimeError("_calculate_rewards did not run")
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else self.num_generations_eval
        N = self.n_items

        stats = self.accelerator.gather(stash["stats"])
        names = ["hit_rate", "items/counted", "items/parsed", "items/catalog_ratio", "items/valid_ratio",
                 "length/overflow_rate", "length/early_stop_rate", "length/eos_rate", "ndcg"]
        for j, name in enumerate(names):
            self._metrics[mode][name].append(stats[:, j].mean().item())

        if self.algorithm != "rank_grpo":
            return output

        item_index = self._token_item_index(output["completion_ids"], output["completion_mask"], stash["spans"],
                                            stash["completion_ids"])
        rank_r = self.accelerator.gather(stash["rank_rewards"])  # (B_global, N)
        tail_r = self.accelerator.gather(stash["tail_rewards"])  # (B_global,)
        adv = build_advantages(rank_r, tail_r, G, self.args.adv_eps, self.args.length_shaping)
        B_local = output["completion_ids"].size(0)
        process_slice = slice(self.accelerator.process_index * B_local, (self.accelerator.process_index + 1) * B_local)
        output["advantages"] = adv[process_slice].contiguous()  # (B, N+1): batch first, split like TRL's tensors
        output["item_index"] = item_index  # (B, T)

        for k in range(N):
            self._metrics[mode][f"rewards/pos_{k + 1}/mean"].append(rank_r[:, k].mean().item())
        self._metrics[mode]["rewards/tail/mean"].append(tail_r.mean().item())
        const = (rank_r.view(-1, G, N).amax(1) == rank_r.view(-1, G, N).amin(1)).float().mean()
        self._metrics[mode]["frac_rank_zero_std"].append(const.item())
        return output

    # ---------------------------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs):
        if self.algorithm != "rank_grpo":
            return super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        per_token_logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True)

        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        item_index = torch.where(mask != 0, inputs["item_index"], torch.full_like(inputs["item_index"], -1))
        advantages = inputs["advantages"]  # (B, N+1)
        K = advantages.size(1)
        log_ratio = (per_token_logps - old) * mask
        log_w, counts = item_log_ratios(log_ratio, item_index, K)  # Eq. 6
        surrogate = clipped_surrogate(log_w, advantages, self.epsilon_low, self.epsilon_high)
        if "importance_sampling_ratio" in inputs:  # vLLM sampler/trainer mismatch correction (TRL computes it)
            is_ratio = inputs["importance_sampling_ratio"]
            if is_ratio.size(1) == 1:
                surrogate = surrogate * is_ratio
            else:
                is_item, _ = item_log_ratios(is_ratio * mask, item_index, K)  # arithmetic mean over the item
                surrogate = surrogate * torch.where(counts > 0, is_item, torch.ones_like(is_item))
        loss = rank_policy_loss(surrogate, counts, self.n_items, self.args.rank_normalization)

        if self.beta != 0.0:
            per_token_kl = k3_kl(per_token_logps, inputs["ref_per_token_logps"])
            kl = sequence_mean(per_token_kl, mask)
            loss = loss + self.beta * kl
        if mode == "train":
            loss = loss / self.current_gradient_accumulation_steps

        # metrics
        with torch.no_grad():
            present = counts > 0
            w = torch.exp(log_w)
            low = ((w < 1 - self.epsilon_low) & (advantages < 0) & present).float()
            high = ((w > 1 + self.epsilon_high) & (advantages > 0) & present).float()
            n_present = present.float().sum()
            stats = torch.stack([low.sum(), high.sum(), (w * present).sum(), n_present,
                                 (entropies * mask).sum(), mask.sum().float(),
                                 (per_token_kl * mask).sum() if self.beta != 0.0 else torch.zeros((), device=w.device)])
            tot = self.accelerator.reduce(stats, reduction="sum")
            n_items = tot[3].clamp(min=1.0)
            self._metrics[mode]["clip_ratio/low_mean"].append((tot[0] / n_items).item())
            self._metrics[mode]["clip_ratio/high_mean"].append((tot[1] / n_items).item())
            self._metrics[mode]["item_ratio/mean"].append((tot[2] / n_items).item())
            self._metrics[mode]["entropy"].append((tot[4] / tot[5].clamp(min=1.0)).item())
            if self.beta != 0.0:
                self._metrics[mode]["kl"].append((tot[6] / tot[5].clamp(min=1.0)).item())
        return loss
