"""The method layer (trainers/core_algos.py): every registry entry against a slow loop written from its equation."""
from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from references import ref_clipped_surrogate, ref_k3_kl, ref_zscore_column
from trainers import core_algos as ca

torch.set_num_threads(1)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _mask(B, T, seed=0):
    """Right-padded rows of random length >= 1, with a few masked holes (env tokens) inside."""
    rng = random.Random(seed)
    m = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = rng.randint(1, T)
        m[b, :n] = 1
        for t in range(n):
            if rng.random() < 0.15:
                m[b, t] = 0
    return m


# ------------------------------------------------------------------------------------------------ registries
def test_registries_hold_the_documented_entries_and_fail_clearly():
    assert set(ca.ADV_ESTIMATORS) >= {"group_zscore", "rank_zscore", "rank_center", "reinforce_pp_baseline"}
    assert set(ca.RATIOS) >= {"token", "item", "sequence"}
    assert set(ca.LOSS_AGGREGATIONS) >= {"paper", "token", "sequence"}
    assert set(ca.POLICY_LOSSES) >= {"ppo_clip"}
    assert ca.get_adv_est("rank_zscore") is ca.rank_zscore
    assert ca.get_policy_loss("ppo_clip") is ca.ppo_clip_loss
    assert [ca.is_token_mean(n) for n in ("paper", "token", "sequence")] == [False, True, False]
    with pytest.raises(ValueError, match="unknown policy loss 'dpo'.*ppo_clip"):
        ca.get_policy_loss("dpo")
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*group_zscore"):
        ca.get_adv_est("ppo")
    with pytest.raises(ValueError, match="already registered"):
        ca.register_ratio("token")(lambda *a, **k: None)


# ------------------------------------------------------------------------------------------- advantages
@pytest.mark.parametrize("G", [2, 4, 8])
def test_rank_zscore_matches_eq7_loop(G):
    B, K, eps = 4 * G, 6, 1e-4
    r = (torch.rand(B, K, generator=torch.Generator().manual_seed(G)) < 0.3).double()
    r[:G, 2] = 1.0  # a constant column -> exactly 0
    want = [[0.0] * K for _ in range(B)]
    for g0 in range(0, B, G):
        for k in range(K):
            col = ref_zscore_column([r[i, k].item() for i in range(g0, g0 + G)], eps)
            for j, v in enumerate(col):
                want[g0 + j][k] = v
    got = ca.get_adv_est("rank_zscore")(r, num_generations=G, eps=eps)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (got[:G, 2] == 0).all()


@pytest.mark.parametrize("G", [2, 4, 8])
def test_rank_center_matches_a_loop_and_keeps_the_reward_scale(G):
    """A_ik = r_ik - mean_g r_gk: no std division, so a log-discounted reward keeps rank 1 above rank 20."""
    B, K = 3 * G, 5
    r = torch.rand(B, K, generator=torch.Generator().manual_seed(10 + G), dtype=torch.float64)
    r[:G, 1] = 0.3  # a constant column -> exactly 0
    want = [[0.0] * K for _ in range(B)]
    for g0 in range(0, B, G):
        for k in range(K):
            col = [r[i, k].item() for i in range(g0, g0 + G)]
            mean = sum(col) / G
            for j, v in enumerate(col):
                want[g0 + j][k] = 0.0 if max(col) == min(col) else v - mean
    got = ca.get_adv_est("rank_center")(r, num_generations=G)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (got[:G, 1] == 0).all()
    # one hit at rank 1 and one at rank 20 (log scheme's own-rank weights 1 and 1/log2(21)): the z-score gives them
    # the same advantage, centering keeps the 4.4x ratio
    hit = torch.zeros(2, 2, dtype=torch.float64)
    hit[0] = torch.tensor([1.0, 1.0 / math.log2(21)])
    centered = ca.rank_center(hit, num_generations=2)[0].tolist()
    zscored = ca.rank_zscore(hit, num_generations=2)[0].tolist()
    assert centered[0] / centered[1] == pytest.approx(math.log2(21))
    assert zscored[0] == pytest.approx(zscored[1], rel=1e-3)


def test_group_zscore_matches_eq2_loop_and_is_exact_zero_on_constant_groups():
    G, eps = 4, 1e-4
    r = _rand(12, seed=3)
    r[4:8] = 0.1  # a constant group whose float mean is not exactly 0.1
    want = []
    for g0 in range(0, 12, G):
        want += ref_zscore_column(r[g0:g0 + G].tolist(), eps)
    got = ca.get_adv_est("group_zscore")(r, num_generations=G, eps=eps)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (got[4:8] == 0).all()
    with pytest.raises(ValueError, match="whole number of groups"):
        ca.group_zscore(r[:10], num_generations=4)
    with pytest.raises(ValueError, match=r"\(B,\) rewards"):
        ca.group_zscore(r.view(4, 3), num_generations=2)


def test_reinforce_pp_baseline_equals_token_level_whitening_loop():
    """Group-mean baseline, broadcast to every unmasked token, whitened over ALL unmasked tokens of the batch."""
    G, B, T, eps = 4, 12, 9, 1e-8
    r = _rand(B, seed=5)
    mask = _mask(B, T, seed=5)
    mask[7] = 0  # a fully masked row (over-long trajectory): no tokens, no statistics
    # slow reference: token by token
    base = []
    for g0 in range(0, B, G):
        m = statistics.mean(r[g0:g0 + G].tolist())
        base += [r[i].item() - m for i in range(g0, g0 + G)]
    tokens = [base[b] for b in range(B) for t in range(T) if mask[b, t] == 1]
    mu = statistics.mean(tokens)
    var = statistics.variance(tokens)  # unbiased, as a masked whitening over tokens
    want = [[(base[b] - mu) / math.sqrt(var + eps) if mask[b, t] == 1 else 0.0 for t in range(T)] for b in range(B)]

    per_row = ca.get_adv_est("reinforce_pp_baseline")(r, num_generations=G, token_counts=mask.sum(dim=1), eps=eps)
    assert per_row.shape == (B,)
    torch.testing.assert_close(per_row[:, None] * mask, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    # whitened: token-weighted mean 0 and unbiased variance 1 over the unmasked tokens
    tok = (per_row[:, None].expand(B, T))[mask == 1]
    assert abs(tok.mean().item()) < 1e-12 and tok.var(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)


def test_reinforce_pp_baseline_degenerate_batches():
    r = torch.tensor([1.0, 0.0])
    assert ca.reinforce_pp_baseline(r, 2, torch.tensor([0.0, 1.0])).tolist() == [0.0, 0.0]  # < 2 tokens
    with pytest.raises(ValueError, match="token_counts"):
        ca.reinforce_pp_baseline(r, 2, torch.ones(3))


# ------------------------------------------------------------------------------------------------ ratios
def test_token_sequence_and_item_ratios_match_loops():
    B, T, K = 5, 11, 4
    lr = _rand(B, T, seed=7) * 0.3
    mask = _mask(B, T, seed=7)
    rng = random.Random(7)
    idx = torch.tensor([[rng.randint(-1, K - 1) for _ in range(T)] for _ in range(B)])

    log_w, weights = ca.get_ratio("token")(lr, mask)
    torch.testing.assert_close(log_w, lr * mask)
    torch.testing.assert_close(weights, mask)

    log_w, counts = ca.get_ratio("sequence")(lr, mask)
    for b in range(B):
        toks = [lr[b, t].item() for t in range(T) if mask[b, t] == 1]
        assert counts[b, 0].item() == len(toks)
        assert log_w[b, 0].item() == pytest.approx(sum(toks) / len(toks), abs=1e-12)

    log_w, counts = ca.get_ratio("item")(lr, mask, item_index=idx, n_units=K)
    for b in range(B):
        for k in range(K):
            toks = [lr[b, t].item() for t in range(T) if mask[b, t] == 1 and idx[b, t] == k]
            assert counts[b, k].item() == len(toks)
            # Eq. 6: ratio of geometric means = exp(mean log-ratio); no tokens -> ratio 1
            assert math.exp(log_w[b, k].item()) == pytest.approx(
                math.exp(sum(toks) / len(toks)) if toks else 1.0, rel=1e-12)


# ----------------------------------------------------------------------------------------- loss pieces
def test_clipped_surrogate_and_clip_fractions_match_scalar_loop():
    log_w = _rand(6, 5, seed=9) * 0.2
    adv = _rand(6, 5, seed=10)
    weights = (torch.rand(6, 5, generator=torch.Generator().manual_seed(11)) < 0.8).double()
    lo, hi = 0.2, 0.28
    got = ca.clipped_surrogate(log_w, adv, lo, hi)
    n_low = n_high = 0
    for i in range(6):
        for k in range(5):
            w, a = math.exp(log_w[i, k].item()), adv[i, k].item()
            assert got[i, k].item() == pytest.approx(ref_clipped_surrogate(w, a, lo, hi), abs=1e-12)
            if weights[i, k] > 0:
                n_low += w < 1 - lo and a < 0
                n_high += w > 1 + hi and a > 0
    low, high = ca.clip_fractions(log_w, adv, weights, lo, hi)
    assert (low.item(), high.item()) == (n_low, n_high)
    assert n_low + n_high > 0  # the draw exercises the clip


def test_k3_kl_matches_formula_and_is_nonnegative():
    logp, ref = _rand(4, 7, seed=12), _rand(4, 7, seed=13)
    got = ca.k3_kl(logp, ref)
    for i in range(4):
        for t in range(7):
            assert got[i, t].item() == pytest.approx(ref_k3_kl(logp[i, t].item(), ref[i, t].item()), abs=1e-12)
    assert (got >= 0).all() and ca.k3_kl(logp, logp).abs().max().item() == 0.0


def test_loss_aggregations_match_loops():
    B, K, N = 4, 6, 5
    v = _rand(B, K, seed=14)
    w = torch.tensor([[3, 0, 1, 2, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 4], [2, 5, 0, 0, 1, 0]],
                     dtype=torch.float64)
    paper = sum(v[b, k].item() for b in range(B) for k in range(K) if w[b, k] > 0) / (B * N)
    token = sum(v[b, k].item() * w[b, k].item() for b in range(B) for k in range(K)) / w.sum().item()
    rows = []
    for b in range(B):
        n = sum(w[b].tolist())
        rows.append(sum(v[b, k].item() * w[b, k].item() for k in range(K)) / n if n else 0.0)
    assert ca.get_loss_agg("paper")(v, w, n_units=N).item() == pytest.approx(paper, abs=1e-12)
    assert ca.get_loss_agg("token")(v, w).item() == pytest.approx(token, abs=1e-12)
    assert ca.get_loss_agg("sequence")(v, w).item() == pytest.approx(sum(rows) / B, abs=1e-12)
    # all-zero weights: finite zeros, not NaN
    z = torch.zeros(B, K, dtype=torch.float64)
    assert [ca.get_loss_agg(n)(v, z, n_units=N).item() for n in ("paper", "token", "sequence")] == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------- policy losses
def _ref_ppo_clip(logp, old, adv, mask, unit_of, n_units, lo, hi, aggregation, agg_n, is_ratio, ref):
    """The clipped-surrogate policy loss and the k3 KL by loops over rows, units and tokens, from the equation:
    log w_bk = mean over unit k's tokens of (logp - old), c_bk = mean of the corrections over those tokens (the
    row's own for a (B, 1) correction, 1 without tokens), s_bk = c_bk min(w A, clip(w) A); then the aggregation."""
    B, T = logp.shape
    s, n = [[0.0] * n_units for _ in range(B)], [[0] * n_units for _ in range(B)]
    for b in range(B):
        for k in range(n_units):
            toks = [t for t in range(T) if mask[b, t] == 1 and unit_of(b, t) == k]
            n[b][k] = len(toks)
            if not toks:
                continue
            w = math.exp(sum(logp[b, t].item() - old[b, t].item() for t in toks) / len(toks))
            a = adv[b].item() if adv.dim() == 1 else adv[b, k].item()
            if is_ratio is None:
                c = 1.0
            elif is_ratio.size(1) == 1:
                c = is_ratio[b, 0].item()
            else:
                c = sum(is_ratio[b, t].item() for t in toks) / len(toks)
            s[b][k] = c * min(w * a, min(max(w, 1 - lo), 1 + hi) * a)
    if aggregation == "paper":
        objective = sum(s[b][k] for b in range(B) for k in range(n_units) if n[b][k]) / (B * agg_n)
    elif aggregation == "token":
        objective = sum(s[b][k] * n[b][k] for b in range(B) for k in range(n_units)) / sum(map(sum, n))
    else:
        objective = sum(sum(s[b][k] * n[b][k] for k in range(n_units)) / max(1, sum(n[b])) for b in range(B)) / B
    kl_rows = []
    for b in range(B):
        toks = [t for t in range(T) if mask[b, t] == 1]
        d = [ref[b, t].item() - logp[b, t].item() for t in toks]
        kl_rows.append(sum(math.exp(x) - x - 1 for x in d) / max(1, len(toks)))
    return -objective, sum(kl_rows) / B


@pytest.mark.parametrize("units", ["token", "sequence", "item"])
@pytest.mark.parametrize("aggregation", ["paper", "token", "sequence"])
@pytest.mark.parametrize("correction", [None, "token", "row"])
def test_ppo_clip_policy_loss_matches_loop(units, aggregation, correction):
    B, T, K, lo, hi = 5, 10, 4, 0.2, 0.28
    logp = -_rand(B, T, seed=21).abs()
    old = logp + 0.3 * _rand(B, T, seed=22)  # large enough that both clips are hit
    ref = logp + 0.2 * _rand(B, T, seed=23)
    mask = _mask(B, T, seed=24)
    rng = random.Random(25)
    idx = torch.tensor([[rng.randint(-1, K - 1) for _ in range(T)] for _ in range(B)])
    is_ratio = {None: None, "token": torch.exp(0.1 * _rand(B, T, seed=26)),
                "row": torch.exp(0.1 * _rand(B, 1, seed=27))}[correction]
    if units == "token":
        n_units, unit_of, kwargs = T, (lambda b, t: t), {}
    elif units == "sequence":
        n_units, unit_of, kwargs = 1, (lambda b, t: 0), {}
    else:
        n_units, unit_of, kwargs = K, (lambda b, t: int(idx[b, t])), {"item_index": idx, "n_units": K}
    adv = _rand(B, K, seed=28) if units == "item" else _rand(B, seed=28)  # per unit, or one per row
    agg_n = 3  # the ``paper`` divisor's N (Rank-GRPO: fewer than the units, the tail being an extra one)
    out = ca.get_policy_loss("ppo_clip")(
        logp, old, adv, mask, eps_low=lo, eps_high=hi, ratio=units, ratio_kwargs=kwargs, aggregation=aggregation,
        agg_kwargs={"n_units": agg_n} if aggregation == "paper" else {}, importance_sampling_ratio=is_ratio,
        ref_per_token_logps=ref)
    want_policy, want_kl = _ref_ppo_clip(logp, old, adv, mask, unit_of, n_units, lo, hi, aggregation, agg_n,
                                         is_ratio, ref)
    assert out.policy.item() == pytest.approx(want_policy, abs=1e-12)
    assert out.kl.item() == pytest.approx(want_kl, abs=1e-12)
    assert out.log_w.shape == out.weights.shape == out.advantages.shape == (B, n_units)
    # without reference log-probs there is no KL term, and the policy term is unchanged
    plain = ca.ppo_clip_loss(logp, old, adv, mask, eps_low=lo, eps_high=hi, ratio=units, ratio_kwargs=kwargs,
                             aggregation=aggregation, agg_kwargs={"n_units": agg_n} if aggregation == "paper" else {},
                             importance_sampling_ratio=is_ratio)
    assert plain.kl is None and torch.equal(plain.policy, out.policy)


def test_ppo_clip_masked_positions_do_not_reach_the_loss():
    """A NaN / inf log-prob at a masked position (padding, injected tokens) changes neither term."""
    B, T = 3, 6
    logp, old, ref = -_rand(B, T, seed=31).abs(), -_rand(B, T, seed=32).abs(), -_rand(B, T, seed=33).abs()
    mask = _mask(B, T, seed=34)
    adv = _rand(B, seed=35)
    hole = mask == 0
    assert hole.any()
    for agg in ("token", "sequence"):
        a = ca.ppo_clip_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, aggregation=agg,
                             ref_per_token_logps=ref)
        b = ca.ppo_clip_loss(torch.where(hole, torch.full_like(logp, math.nan), logp),
                             torch.where(hole, torch.full_like(old, -math.inf), old), adv, mask, eps_low=0.2,
                             eps_high=0.28, aggregation=agg, ref_per_token_logps=ref)
        assert torch.equal(a.policy, b.policy) and torch.equal(a.kl, b.kl)
