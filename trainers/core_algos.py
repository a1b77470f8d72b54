"""The method layer: advantage estimators, importance ratios, policy-loss pieces and loss aggregations as small pure
tensor functions, registered by name (after verl's ``core_algos.py``). Every trainer builds its loss from these;
``tests/test_core_algos.py`` checks each registry entry against a slow loop written from its equation.

Notation: B rows (completions), G completions per prompt (groups are contiguous blocks of G rows, TRL's order),
T completion tokens, K "units" a row is split into (ranks for Rank-GRPO). Equations: "RG" = Rank-GRPO (Zhu et al.
2026), "R2" = R²ec / RecPO (You et al. 2025), "DR" = DeepRec (Zheng et al. 2025); docs/methods.md has them all.

    adv = get_adv_est("rank_zscore")(rank_rewards, num_generations=G)        # (B, K)
    log_w, counts = get_ratio("item")(log_ratio, mask, item_index=idx, n_units=K)
    objective = get_loss_agg("paper")(clipped_surrogate(log_w, adv, 0.2, 0.28), counts, n_units=N)
    out = get_policy_loss("ppo_clip")(logps, old, adv, mask, eps_low=0.2, eps_high=0.28, ratio="item",
                                      ratio_kwargs=dict(item_index=idx, n_units=K), aggregation="paper",
                                      agg_kwargs=dict(n_units=N), ref_per_token_logps=ref)   # out.policy, out.kl
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

ADV_ESTIMATORS: dict[str, Callable] = {}
RATIOS: dict[str, Callable] = {}
LOSS_AGGREGATIONS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}


def _register(table: dict, kind: str):
    def register(name: str, **attributes):
        """``attributes`` are set on the function (e.g. an aggregation's ``token_mean``)."""
        def decorator(fn):
            if name in table:
                raise ValueError(f"{kind} {name!r} is already registered")
            for key, value in attributes.items():
                setattr(fn, key, value)
            table[name] = fn
            return fn

        return decorator

    def get(name: str):
        try:
            return table[name]
        except KeyError:
            raise ValueError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}") from None

    return register, get


register_adv_est, get_adv_est = _register(ADV_ESTIMATORS, "advantage estimator")
register_ratio, get_ratio = _register(RATIOS, "importance ratio")
register_loss_agg, get_loss_agg = _register(LOSS_AGGREGATIONS, "loss aggregation")
register_policy_loss, get_policy_loss = _register(POLICY_LOSSES, "policy loss")


def _groups(x: torch.Tensor, num_generations: int) -> torch.Tensor:
    if num_generations < 1 or x.size(0) % num_generations:
        raise ValueError(f"{x.size(0)} rows are not a whole number of groups of {num_generations}")
    return x.view(-1, num_generations, *x.shape[1:])


# ------------------------------------------------------------------------------------------ advantage estimators
@register_adv_est("rank_zscore")
def rank_zscore(rewards: torch.Tensor, num_generations: int, eps: float = 1e-4) -> torch.Tensor:
    """RG Eq. 7: A_ik = (r_ik - mean_g r_gk) / (std_g r_gk + eps), per group and per rank column k.

    ``rewards`` (B, K) -> (B, K). std is the unbiased (Bessel) group std, as in TRL; a column whose G values are all
    equal gets exactly 0 (no rounding residue, never NaN); G = 1 gives 0.
    """
    r = _groups(rewards.double(), num_generations)  # (B/G, G, K)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, unbiased=True) if num_generations > 1 else torch.zeros_like(mean)
    adv = (r - mean) / (std + eps)
    constant = (r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)).expand_as(adv)
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.reshape(rewards.shape).to(rewards.dtype)


@register_adv_est("rank_center")
def rank_center(rewards: torch.Tensor, num_generations: int, eps: float = 1e-4) -> torch.Tensor:
    """A_ik = r_ik - mean_g r_gk, per group and per rank column k: Eq. 7 without the std division (as Dr. GRPO drops
    it for sequence rewards). ``rewards`` (B, K) -> (B, K). The reward's scale survives, so a discounted scheme
    (``log``) weights rank 1 above rank 20, which the z-score cancels; a lone hit in a group is not scaled up to
    ~1.5 either. ``eps`` is unused (the signature of the estimators); a constant column gets exactly 0.
    """
    del eps
    r = _groups(rewards.double(), num_generations)  # (B/G, G, K)
    adv = r - r.mean(dim=1, keepdim=True)
    constant = (r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)).expand_as(adv)
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.reshape(rewards.shape).to(rewards.dtype)


@register_adv_est("group_zscore")
def group_zscore(rewards: torch.Tensor, num_generations: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO / R2 Eq. 2: A_i = (R_i - mean_group R) / (std_group R + eps). ``rewards`` (B,) -> (B,).

    The one-column case of ``rank_zscore`` (same std, same exact 0 for a constant group).
    """
    if rewards.dim() != 1:
        raise ValueError(f"group_zscore takes (B,) rewards, got shape {tuple(rewards.shape)}")
    return rank_zscore(rewards[:, None], num_generations, eps)[:, 0]


@register_adv_est("reinforce_pp_baseline")
def reinforce_pp_baseline(rewards: torch.Tensor, num_generations: int, token_counts: torch.Tensor,
                          eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++-baseline (DR): a_i = R_i - mean_group R, then whitened over the batch's unmasked tokens:
    A_i = (a_i - mu) / sqrt(var + eps), mu / var the mean and unbiased variance of a over all policy tokens.

    ``rewards`` (B,), ``token_counts`` (B,) = unmasked (policy) tokens of each row -> (B,) per-row advantage, to be
    broadcast over that row's tokens. Since a is constant within a row, the token-level mean and variance are the
    count-weighted ones of the rows, so the whole global batch can be whitened from (B,) vectors gathered across
    processes. Rows with no policy token (e.g. masked-out over-long trajectories) do not enter the statistics.
    """
    if rewards.dim() != 1 or token_counts.shape != rewards.shape:
        raise ValueError(f"reinforce_pp_baseline takes (B,) rewards and (B,) token_counts, got "
                         f"{tuple(rewards.shape)} and {tuple(token_counts.shape)}")
    r = _groups(rewards.double(), num_generations)
    a = (r - r.mean(dim=1, keepdim=True)).reshape(-1)
    n = token_counts.double()
    total = n.sum()
    if total < 2:
        return torch.zeros_like(rewards)
    mu = (n * a).sum() / total
    var = (n * (a - mu) ** 2).sum() / (total - 1)
    return ((a - mu) * torch.rsqrt(var + eps)).to(rewards.dtype)


# ------------------------------------------------------------------------------------------------ ratios
def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask != 0, else exactly 0: a NaN / inf at a padded or environment position never propagates
    (x * mask would turn it into NaN)."""
    return torch.where(mask != 0, x, torch.zeros_like(x))


@register_ratio("token")
def token_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO token ratio: log w_it = log pi(y_it) - log pi_old(y_it). (B, T) -> ((B, T) log w, (B, T) weights =
    mask)."""
    m = mask.to(log_ratio.dtype)
    return _masked(log_ratio, mask), m


@register_ratio("sequence")
def sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO sequence ratio: log w_i = mean over the row's unmasked tokens of the token log-ratios (the geometric
    mean of the token ratios). (B, T) -> ((B, 1) log w, (B, 1) token counts)."""
    m = mask.to(log_ratio.dtype)
    counts = m.sum(dim=1, keepdim=True)
    return _masked(log_ratio, mask).sum(dim=1, keepdim=True) / counts.clamp(min=1.0), counts


@register_ratio("item")
def item_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, item_index: torch.Tensor, n_units: int,
                   **_) -> tuple[torch.Tensor, torch.Tensor]:
    """RG Eq. 6 item ratio: log w_ik = mean over item k's tokens of (log pi - log pi_old), i.e. the ratio of the
    geometric means of the item's token probabilities.

    ``log_ratio`` (B, T), ``mask`` (B, T), ``item_index`` (B, T) with -1 (no unit) or 0..n_units-1 ->
    ((B, n_units) log w, (B, n_units) token counts). Units without tokens get log w 0 and count 0.
    """
    idx = torch.where((item_index >= 0) & (mask != 0), item_index, torch.full_like(item_index, n_units))
    lr = _masked(log_ratio, mask)
    B = log_ratio.size(0)
    sums = lr.new_zeros(B, n_units + 1).scatter_add(1, idx, lr)  # column n_units: the dump slot
    counts = lr.new_zeros(B, n_units + 1).scatter_add(1, idx, torch.ones_like(lr))
    sums, counts = sums[:, :n_units], counts[:, :n_units]
    return sums / counts.clamp(min=1.0), counts


# ---------------------------------------------------------------------------------------- policy-loss pieces
def clipped_surrogate(log_w: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """PPO clipped surrogate: min(w A, clip(w, 1 - eps_low, 1 + eps_high) A), w = exp(log_w); any matching shapes
    (RG Eq. 6 objective, R2 Eq. 8's l(r, A), DR's clip [0.8, 1.28] = eps 0.2 / 0.28)."""
    w = torch.exp(log_w)
    return torch.min(w * advantages, torch.clamp(w, 1.0 - eps_low, 1.0 + eps_high) * advantages)


def k3_kl(per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased)."""
    d = ref_per_token_logps - per_token_logps
    return torch.exp(d) - d - 1.0


def clip_fractions(log_w: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor, eps_low: float,
                   eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of units whose clip is active: (low: w < 1 - eps_low with A < 0, high: w > 1 + eps_high with A > 0),
    over units with weight > 0. Returned as sums so callers can reduce them across processes."""
    w = torch.exp(log_w)
    present = weights > 0
    low = ((w < 1 - eps_low) & (advantages < 0) & present).sum()
    high = ((w > 1 + eps_high) & (advantages > 0) & present).sum()
    return low.to(log_w.dtype), high.to(log_w.dtype)


# ------------------------------------------------------------------------------------------- aggregations
@register_loss_agg("paper")
def paper_unit_mean(values: torch.Tensor, weights: torch.Tensor, n_units: int) -> torch.Tensor:
    """RG's 1/(G N): sum over rows and units that have tokens (weight > 0) of ``values``, divided by B * n_units.
    ``values``/``weights`` (B, K) -> scalar. A unit without tokens contributes 0; extra units (Rank-GRPO's tail)
    add terms but the divisor stays n_units, as in the paper."""
    return _masked(values, weights > 0).sum() / (values.size(0) * n_units)


@register_loss_agg("token", token_mean=True)
def token_weighted_mean(values: torch.Tensor, weights: torch.Tensor, n_units: int | None = None) -> torch.Tensor:
    """Token-weighted mean: sum w_bk v_bk / sum w_bk (TRL's ``bnpo``; the released Rank-GRPO code, where w = the
    unit's token count). (B, K) -> scalar. Registered with ``token_mean=True``: its divisor is the micro-batch's
    own weight sum, which the trainer rescales to every process's (``RecRLTrainer.global_token_mean``)."""
    return (_masked(values, weights) * weights).sum() / weights.sum().clamp(min=1.0)


@register_loss_agg("sequence")
def sequence_mean(values: torch.Tensor, weights: torch.Tensor, n_units: int | None = None) -> torch.Tensor:
    """Per-row weighted mean, then the mean over rows (TRL's ``grpo`` loss; the k3 KL per sequence).
    (B, K) -> scalar."""
    w = weights.to(values.dtype)
    return ((_masked(values, w) * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)).mean()


def is_token_mean(aggregation: str) -> bool:
    """Whether an aggregation divides by the micro-batch's own weight sum (registered with ``token_mean=True``), so
    that under data parallelism it must be rescaled to the global sum."""
    return bool(getattr(get_loss_agg(aggregation), "token_mean", False))


# ------------------------------------------------------------------------------------------- policy losses
class PolicyLoss(NamedTuple):
    """A policy loss's terms, apart (as verl's ``compute_policy_loss``): the trainer weighs and sums them."""

    policy: torch.Tensor  # scalar policy term of the micro-batch (to minimise)
    kl: torch.Tensor | None  # scalar KL term, not yet times beta; None without reference log-probs
    log_w: torch.Tensor  # (B, K) unit log-ratios, for the metrics
    weights: torch.Tensor  # (B, K) unit weights (token counts; 0: a unit without tokens)
    advantages: torch.Tensor  # (B, K) the advantages of the units


@register_policy_loss("ppo_clip")
def ppo_clip_loss(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, *, eps_low: float, eps_high: float, ratio: str = "token",
                  aggregation: str = "token", ratio_kwargs: dict | None = None, agg_kwargs: dict | None = None,
                  importance_sampling_ratio: torch.Tensor | None = None,
                  ref_per_token_logps: torch.Tensor | None = None) -> PolicyLoss:
    """Clipped-surrogate PPO loss over units (RG Eq. 6, R2 Eq. 8's policy part, DR's loss):
    policy = -agg_bk( c_bk min(w_bk A_bk, clip(w_bk, 1 - eps_low, 1 + eps_high) A_bk) ), log w_bk = the ``ratio``
    entry on log pi - log pi_old over ``mask``; c_bk = the mean of the sampler-correction ratios over unit k's tokens
    (1 for a unit without tokens; a (B, 1) correction scales every unit of its row); kl = the mean over rows of the
    mean over their mask tokens of k3(pi, pi_ref) (``sequence_mean`` of ``k3_kl``).

    ``per_token_logps`` / ``old_per_token_logps`` / ``mask`` (B, T); ``advantages`` (B,) (one per row, shared by
    its units) or (B, K); ``importance_sampling_ratio`` (B, T) or (B, 1) -> ``PolicyLoss`` with (B, K) unit tensors.
    """
    ratio_kwargs, agg_kwargs = ratio_kwargs or {}, agg_kwargs or {}
    mask = mask.to(per_token_logps.dtype)
    unit_ratio = get_ratio(ratio)
    log_w, weights = unit_ratio(per_token_logps - old_per_token_logps, mask, **ratio_kwargs)
    adv = advantages[:, None].expand_as(log_w) if advantages.dim() == 1 else advantages
    surrogate = clipped_surrogate(log_w, adv, eps_low, eps_high)
    if importance_sampling_ratio is not None:  # e.g. TRL's vLLM sampler/trainer mismatch correction
        if importance_sampling_ratio.size(1) == 1:
            surrogate = surrogate * importance_sampling_ratio
        else:  # the arithmetic mean of the token corrections over the unit (the ratio entries are unit means)
            unit_is, _ = unit_ratio(importance_sampling_ratio, mask, **ratio_kwargs)
            surrogate = surrogate * torch.where(weights > 0, unit_is, torch.ones_like(unit_is))
    policy = -get_loss_agg(aggregation)(surrogate, weights, **agg_kwargs)
    kl = None
    if ref_per_token_logps is not None:
        kl = sequence_mean(k3_kl(per_token_logps, ref_per_token_logps), mask)
    return PolicyLoss(policy, kl, log_w, weights, adv)
