"""rewards.rank_rewards (Rank-GRPO Eq. 8-9 and sequence NDCG) vs hand values and slow loop references."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from conftest import REDDIT_DIR, require
from references import ref_rank_rewards, ref_sequence_ndcg
from rewards.catalog import load_catalog
from rewards.judge import judge
from rewards.rank_rewards import (
    RewardScheme,
    batch_rank_rewards,
    batch_sequence_ndcg,
    parse_scheme,
    rank_rewards,
    sequence_ndcg,
)

SCHEMES = ("exp_inf", "exp_1", "exp_1.5", "exp_2", "exp_3.7", "exp_0.5", "exp_10", "log")


# ------------------------------------------------------------------------------------------------
# Hand-checked
# ------------------------------------------------------------------------------------------------


def test_hand_values_rel_101():
    rel = [1, 0, 1]
    # exp_inf: the relevance itself, zero-padded to N = 5
    assert list(rank_rewards(rel, "exp_inf", 5)) == [1, 0, 1, 0, 0]
    # exp_2: r1 = 1 + 0/2 + 1/4 = 1.25 ; r2 = 0 + 1/2 = 0.5 ; r3 = 1 ; r4 = r5 = 0
    assert rank_rewards(rel, "exp_2", 5) == pytest.approx([1.25, 0.5, 1.0, 0.0, 0.0])
    # log: r1 = 1/log2(2) + 1/log2(4) = 1.5 ; r2 = r3 = 1/log2(4) = 0.5 ; r4 = r5 = 0
    assert rank_rewards(rel, "log", 5) == pytest.approx([1.5, 0.5, 0.5, 0.0, 0.0])
    # exp_1 = plain reverse cumulative sum: [2, 1, 1, 0, 0]
    assert rank_rewards(rel, "exp_1", 5) == pytest.approx([2.0, 1.0, 1.0, 0.0, 0.0])
    # ndcg, GT 2: DCG = 1.5, IDCG = 1 + 1/log2(3) = 1.63093 -> 0.91972
    assert sequence_ndcg(rel, 2, 5) == pytest.approx(0.9197207891481876)
    # GT 1: IDCG over min(1, 5) = 1 -> DCG 1.5 / 1
    assert sequence_ndcg(rel, 1, 5) == pytest.approx(1.5)


def test_cut_and_pad_to_n_items():
    rel = [0, 1, 0, 0, 1, 1]
    assert list(rank_rewards(rel, "exp_inf", 3)) == [0, 1, 0]  # cut
    assert rank_rewards(rel, "exp_2", 3) == pytest.approx([0.5, 1.0, 0.0])  # items past N never count
    assert rank_rewards(rel, "log", 8).shape == (8,)
    assert rank_rewards([], "log", 4).tolist() == [0, 0, 0, 0]
    assert rank_rewards(rel, "exp_inf").shape == (20,)
    assert sequence_ndcg([0, 0, 0, 1], 1, n_items=3) == 0.0  # the hit is past N
    assert sequence_ndcg([1, 1], 0) == 0.0  # no ground truth


def test_parse_scheme():
    assert parse_scheme("exp_inf") == RewardScheme("exp_inf", "exp", math.inf)
    assert parse_scheme("EXP_2") == RewardScheme("exp_2", "exp", 2.0)
    assert parse_scheme("exp_1.5").gamma == 1.5
    assert parse_scheme("exp_.5").gamma == 0.5
    assert parse_scheme("log") == RewardScheme("log", "log", None)
    assert parse_scheme(parse_scheme("log")).kind == "log"
    for bad in ("exp_0", "exp_0.0", "exp_-1", "exp_", "exp_nan", "exp_abc", "ndcg", "", "linear", "exp2"):
        with pytest.raises(ValueError, match=r"exp_inf.*exp_<Gamma>.*log"):
            parse_scheme(bad)


# ------------------------------------------------------------------------------------------------
# Against the slow references
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_random_rel_vs_reference(scheme):
    rng = random.Random(SCHEMES.index(scheme))
    for _ in range(60):
        length = rng.randint(0, 26)
        rel = [1 if rng.random() < 0.3 else 0 for _ in range(length)]
        n = rng.choice([1, 5, 20, 24])
        assert rank_rewards(rel, scheme, n) == pytest.approx(ref_rank_rewards(rel, scheme, n), rel=1e-12, abs=1e-12)
    mat = np.array([[1 if rng.random() < 0.3 else 0 for _ in range(20)] for _ in range(32)], dtype=float)
    got = batch_rank_rewards(mat, scheme)
    assert got.shape == (32, 20)
    for i in range(32):
        assert got[i] == pytest.approx(ref_rank_rewards(list(mat[i]), scheme, 20), rel=1e-12, abs=1e-12)
        assert got[i] == pytest.approx(rank_rewards(mat[i], scheme, 20), rel=1e-14, abs=1e-15)
    assert batch_rank_rewards(mat, scheme, n_items=7).shape == (32, 7)


def test_long_lists_are_stable():
    n = 300
    rng = random.Random(3)
    rel = [1 if rng.random() < 0.1 else 0 for _ in range(n)]
    for scheme in ("exp_1.5", "exp_2", "exp_0.9", "log"):
        got = rank_rewards(rel, scheme, n)
        assert np.all(np.isfinite(got))
        assert got == pytest.approx(ref_rank_rewards(rel, scheme, n), rel=1e-9, abs=1e-12)


def test_invariants():
    rng = np.random.default_rng(5)
    mat = (rng.random((40, 20)) < 0.25).astype(float)
    # log: r_1 is the whole DCG@N ; exp_inf sums to the number of hits
    dcg = [sum(mat[i, k] / math.log2(k + 2) for k in range(20)) for i in range(40)]
    assert batch_rank_rewards(mat, "log")[:, 0] == pytest.approx(dcg)
    assert batch_rank_rewards(mat, "exp_inf").sum(axis=1) == pytest.approx(mat.sum(axis=1))
    # every scheme is non-increasing in a tail of zeros and zero after the last hit
    for scheme in SCHEMES:
        r = batch_rank_rewards(mat, scheme)
        for i in range(40):
            hits = np.flatnonzero(mat[i])
            last = hits[-1] if len(hits) else -1
            assert np.all(r[i, last + 1:] == 0)
    with pytest.raises(ValueError):
        batch_rank_rewards(mat[0], "log")


def test_sequence_ndcg_vs_reference():
    rng = random.Random(11)
    rels, gts = [], []
    for _ in range(100):
        rel = [1 if rng.random() < 0.3 else 0 for _ in range(20)]
        n_gt = rng.randint(0, 25)
        assert sequence_ndcg(rel, n_gt) == pytest.approx(ref_sequence_ndcg(rel, n_gt, 20), abs=1e-12)
        rels.append(rel)
        gts.append(n_gt)
    batch = batch_sequence_ndcg(np.array(rels, dtype=float), gts)
    assert batch == pytest.approx([ref_sequence_ndcg(r, g, 20) for r, g in zip(rels, gts)], abs=1e-12)


def test_real_reddit_rewards_vs_reference():
    """Relevance vectors of the real Reddit-v2 completions (judged against their ground truth), rewards
    for every scheme compared with the loops, batch == per row."""
    cat = load_catalog(require(REDDIT_DIR / "gt_catalog.pkl"))
    samples = json.loads(require(REDDIT_DIR / "sft_with_assigned_traits_test.json").read_text(encoding="utf-8"))[
        "samples"
    ]
    rels, gts = [], []
    for s in samples:
        gt = [cat.match(t, y) for t, y in s["groundtruth_with_release_year"]]
        gt = [g for g in gt if g is not None]
        seen = {i for t in s["seen_titles"] for i in cat.ids_for_title(t)}
        j = judge(s["completion"][0]["content"], cat, gt, seen)
        rels.append(j.rel_at(20))
        gts.append(len(gt))
    mat = np.stack(rels)
    assert mat.sum() > 0
    for scheme in SCHEMES:
        got = batch_rank_rewards(mat, scheme)
        for i in range(len(rels)):
            assert got[i] == pytest.approx(ref_rank_rewards(list(mat[i]), scheme, 20), rel=1e-12, abs=1e-12)
    nd = batch_sequence_ndcg(mat, gts)
    assert nd == pytest.approx([ref_sequence_ndcg(list(mat[i]), gts[i], 20) for i in range(len(rels))], abs=1e-12)
