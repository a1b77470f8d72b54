"""rewards.judge + rewards.metrics against hand-computed cases and slow references written straight from
the definitions (docs/ARCHITECTURE.md "Metrics"), on toy and real data (Reddit-v2, ReDial, ML-100k)."""
from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest

from conftest import REDDIT_DIR, REDIAL_DIR, REPO, require
from references import ref_groundtruth, ref_hr, ref_merged, ref_metrics, ref_ndcg, ref_recall, ref_statuses
from rewards.catalog import Catalog, load_catalog
from rewards.titles import display_title
from rewards.judge import Judgement, judge, judge_items
from rewards.metrics import hit_at_k, mean_metrics, ndcg_at_k, ranking_metrics, recall_at_k
from rewards.parse import ParsedItem

KS = (5, 10, 15, 20)
ML100K_ITEM = REPO / ".venv/lib/python3.11/site-packages/recbole/dataset_example/ml-100k/ml-100k.item"


def assert_metrics_close(got, want):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# ------------------------------------------------------------------------------------------------
# Low-level functions, hand-checked
# ------------------------------------------------------------------------------------------------


def test_ndcg_hand_two_gt_hits_at_ranks_1_and_3():
    rel = np.array([1, 0, 1, 0, 0], dtype=float)
    # DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5 ; IDCG (2 GT) = 1 + 1/log2(3) = 1.6309297535714575
    assert ndcg_at_k(rel, 2, 5) == pytest.approx(1.5 / 1.6309297535714575)
    assert ndcg_at_k(rel, 2, 5) == pytest.approx(0.9197207891481876)
    # @2 only the rank-1 hit counts: 1 / 1.6309...
    assert ndcg_at_k(rel, 2, 2) == pytest.approx(1 / 1.6309297535714575)
    # @1: DCG 1, IDCG over min(2, 1) = 1 -> 1
    assert ndcg_at_k(rel, 2, 1) == pytest.approx(1.0)
    assert recall_at_k(rel, 2, 1) == 0.5 and recall_at_k(rel, 2, 3) == 1.0 and recall_at_k(rel, 4, 5) == 0.5
    assert hit_at_k(rel, 1) == 1.0 and hit_at_k(rel[1:], 1) == 0.0
    # ideal cap (packed protocol): GT 5 but a 2-long list -> IDCG over 2 ones
    assert ndcg_at_k(np.array([1.0, 1.0]), 5, 10, ideal_cap=2) == pytest.approx(1.0)
    assert ndcg_at_k(np.array([1.0, 1.0]), 5, 10) == pytest.approx(
        (1 + 1 / math.log2(3)) / sum(1 / math.log2(i + 2) for i in range(5))
    )


def test_low_level_edge_cases():
    empty = np.zeros(0)
    assert recall_at_k(empty, 3, 5) == 0.0 and ndcg_at_k(empty, 3, 5) == 0.0 and hit_at_k(empty, 5) == 0.0
    rel = np.array([1.0, 1.0])
    assert recall_at_k(rel, 0, 5) == 0.0 and ndcg_at_k(rel, 0, 5) == 0.0  # no ground truth -> 0
    assert ndcg_at_k(rel, 2, 0) == 0.0 and recall_at_k(rel, 2, 0) == 0.0
    assert ndcg_at_k(np.ones(3000), 3000, 3000) == pytest.approx(1.0)  # beyond the precomputed table


def test_low_level_batched_equals_rows():
    rng = np.random.default_rng(0)
    rel = (rng.random((50, 20)) < 0.2).astype(float)
    n_gt = rng.integers(0, 8, size=50)
    for k in (1, 5, 20, 25):
        b_rec, b_ndcg, b_hit = recall_at_k(rel, n_gt, k), ndcg_at_k(rel, n_gt, k), hit_at_k(rel, k)
        for i in range(50):
            row = list(rel[i])
            assert b_rec[i] == pytest.approx(ref_recall(row, int(n_gt[i]), k))
            assert b_ndcg[i] == pytest.approx(ref_ndcg(row, int(n_gt[i]), k))
            assert b_hit[i] == ref_hr(row, k)


# ------------------------------------------------------------------------------------------------
# judge statuses and ranking_metrics on toy cases
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def toy_catalog() -> Catalog:
    return Catalog(
        [
            {"id": 1, "title": "The Matrix", "year": 1999},
            {"id": 2, "title": "Heat", "year": 1995},
            {"id": 3, "title": "Alien", "year": 1979},
            {"id": 4, "title": "Se7en", "year": 1995},
            {"id": 5, "title": "Blade Runner", "year": 1982},
            {"id": 6, "title": "Usual Suspects, The", "year": 1995},
        ]
    )


def test_judge_status_order(toy_catalog: Catalog):
    text = (
        "Here are my picks:\n"
        "1. Not A Real Movie (2001)\n"  # out_of_catalog
        "2. Alien (1979)\n"  # seen (also in GT: seen wins)
        "3. The Matrix (1999)\n"  # hit
        "4. Matrix, The (1999)\n"  # duplicate (same id as rank 3)
        "5. Heat (1995)\n"  # hit (first GT copy)
        "6. Heat (1996)\n"  # duplicate, even though GT holds a second copy of Heat
        "7. Blade Runner (1982)\n"  # miss
        "8. Alien (1979)\n"  # seen again (seen is checked before duplicate)
        "9. The Usual Suspects (1995)\n"  # hit
        "10. Heat (2010)\n"  # out of tolerance -> out_of_catalog
    )
    j = judge(text, toy_catalog, groundtruth=[1, 2, 2, 3, 6], seen=[3])
    assert j.status == ["out_of_catalog", "seen", "hit", "duplicate", "hit", "duplicate", "miss", "seen", "hit",
                        "out_of_catalog"]
    assert j.ids == [None, 3, 1, 1, 2, 2, 5, 3, 6, None]
    assert j.status == ref_statuses(j.ids, [1, 2, 2, 3, 6], {3})
    assert list(j.rel) == [0, 0, 1, 0, 1, 0, 0, 0, 1, 0]
    assert j.n_hits == 3 and j.n_groundtruth == 5 and len(j) == 10
    assert j.counts() == {"out_of_catalog": 2, "seen": 2, "duplicate": 2, "hit": 3, "miss": 1}
    assert list(j.valid) == [s in ("hit", "miss") for s in j.status]
    assert list(j.in_catalog) == [i is not None for i in j.ids]
    assert list(j.rel_at(12)) == [0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    assert list(j.rel_at(3)) == [0, 0, 1]
    assert list(j.packed_rel(20)) == [1, 0, 1, 0, 0, 1]
    assert j.to_records()[2] == {"title": "The Matrix", "year": 1999, "id": 1, "status": "hit", "line": 3,
                                 "start": text.index("3. The"), "end": text.index("3. The") + 20}


def test_judge_consumes_groundtruth_multiset():
    items = [ParsedItem(f"t{k}", 2000, 0, 0, k) for k in range(3)]
    j = judge_items(items, [7, 8, 7], groundtruth=[7, 7], seen=[])
    assert j.status == ["hit", "miss", "duplicate"]  # the 2nd copy of 7 in GT is never consumed
    j = judge_items(items, [7, 8, 9], groundtruth=[7], seen=[9])
    assert j.status == ["hit", "miss", "seen"]
    with pytest.raises(ValueError):
        Judgement(items, [1], ["hit"])


def test_ranking_metrics_packed_vs_strict_by_hand():
    # positions: ooc, hit, miss, seen, hit ; |GT| = 3
    items = [ParsedItem(f"t{k}", 2000, 0, 0, k) for k in range(5)]
    j = judge_items(items, [None, 1, 2, 9, 3], groundtruth=[1, 3, 4], seen=[9])
    assert j.status == ["out_of_catalog", "hit", "miss", "seen", "hit"]
    strict = ranking_metrics(j, 3, ks=(2, 5), protocol="strict")
    packed = ranking_metrics(j, 3, ks=(2, 5), protocol="packed")
    # strict rel = [0,1,0,0,1]: DCG@5 = 1/log2(3) + 1/log2(6) = 0.63093 + 0.38685 = 1.01778
    # IDCG@5 over min(3,5)=3 ones = 1 + 0.63093 + 0.5 = 2.13093 -> 0.47762
    assert strict["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3) + 0.5))
    assert strict["recall@2"] == pytest.approx(1 / 3) and strict["recall@5"] == pytest.approx(2 / 3)
    # packed rel = [1,0,1] (ooc and seen dropped): DCG@5 = 1 + 0.5 = 1.5 ;
    # IDCG over min(3, 5, 3) = 3 ones = 2.13093 -> 0.70392 ; @2: DCG 1, IDCG over 2 = 1.63093 -> 0.61315
    assert packed["ndcg@5"] == pytest.approx(1.5 / (1 + 1 / math.log2(3) + 0.5))
    assert packed["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert packed["recall@2"] == pytest.approx(1 / 3) and packed["recall@5"] == pytest.approx(2 / 3)
    assert strict["hr@2"] == 1.0 and packed["hr@2"] == 1.0
    for m in (strict, packed):
        assert m["catalog_hit_ratio"] == pytest.approx(4 / 5)
        assert m["valid_item_ratio"] == pytest.approx(3 / 20)  # hit, miss, hit among N = 20 positions
        assert m["num_parsed"] == 5.0
        assert m["num_groundtruth"] == 3.0
    # packing caps the ideal DCG at the packed list's length: one packed item, GT 4
    j1 = judge_items(items[:2], [None, 1], groundtruth=[1, 2, 3, 4], seen=[])
    assert ranking_metrics(j1, 4, ks=(5,), protocol="packed")["ndcg@5"] == pytest.approx(1.0)
    assert ranking_metrics(j1, 4, ks=(5,), protocol="strict")["ndcg@5"] == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3) + 0.5 + 1 / math.log2(5))
    )


def test_ranking_metrics_cut_to_n_items_and_zero_groundtruth():
    items = [ParsedItem(f"t{k}", 2000, 0, 0, k) for k in range(4)]
    j = judge_items(items, [5, 6, 7, 1], groundtruth=[1], seen=[], n_items=3)
    m = ranking_metrics(j, 1, ks=(3, 4), n_items=3, protocol="strict")
    assert m["recall@3"] == 0.0 and m["recall@4"] == 0.0  # the hit is at rank 4, past N = 3
    assert m["num_parsed"] == 4.0 and m["valid_item_ratio"] == 1.0
    z = ranking_metrics(judge_items(items, [1, 2, 3, 4], groundtruth=[], seen=[]), 0)
    assert all(z[f"{name}@{k}"] == 0.0 for name in ("recall", "ndcg", "hr") for k in KS)
    assert z["num_groundtruth"] == 0.0
    empty = ranking_metrics(judge_items([], [], groundtruth=[1], seen=[]), 1)
    assert empty["catalog_hit_ratio"] == 0.0 and empty["valid_item_ratio"] == 0.0 and empty["ndcg@20"] == 0.0
    with pytest.raises(ValueError, match="packed"):
        ranking_metrics(j, 1, protocol="loose")


def test_mean_metrics():
    rows = [{"a": 1.0, "b": 2, "protocol": "packed"}, {"a": 3.0, "b": 4}, {"a": 5.0}]
    m = mean_metrics(rows)
    assert m == {"a": 3.0, "b": 3.0, "num_samples": 3.0}
    assert mean_metrics([]) == {"num_samples": 0.0}


# ------------------------------------------------------------------------------------------------
# Real data: metrics vs the slow reference
# ------------------------------------------------------------------------------------------------


def _check_sample(j: Judgement, ids_gt, seen, cat=None):
    merged = ref_merged(cat) if cat is not None else {}
    ids_gt = ref_groundtruth(merged, list(ids_gt))
    seen = {merged.get(i, i) for i in seen}
    assert j.status == ref_statuses(j.ids, list(ids_gt), set(seen))
    out = {}
    for protocol in ("strict", "packed"):
        got = ranking_metrics(j, len(ids_gt), protocol=protocol)
        assert_metrics_close(got, ref_metrics(j.status, len(ids_gt), protocol, ks=KS))
        out[protocol] = got
    return out


@pytest.fixture(scope="module")
def reddit():
    cat = load_catalog(require(REDDIT_DIR / "gt_catalog.pkl"))
    samples = json.loads(require(REDDIT_DIR / "sft_with_assigned_traits_test.json").read_text(encoding="utf-8"))[
        "samples"
    ]
    return cat, samples


def _reddit_gt_seen(cat, s):
    gt = [cat.match(t, y) for t, y in s["groundtruth_with_release_year"]]
    gt = [g for g in gt if g is not None]
    seen = {i for t in s["seen_titles"] for i in cat.ids_for_title(t)}
    return gt, seen


def test_reddit_completions_vs_reference(reddit):
    cat, samples = reddit
    rows = {"strict": [], "packed": []}
    n_hits = 0
    for s in samples:
        gt, seen = _reddit_gt_seen(cat, s)
        j = judge(s["completion"][0]["content"], cat, gt, seen)
        n_hits += j.n_hits
        res = _check_sample(j, gt, seen, cat)
        for p in rows:
            rows[p].append(res[p])
        # nothing dropped in these catalog-built SFT targets -> the protocols agree
        if all(st not in ("seen", "out_of_catalog") for st in j.status[:20]):
            assert res["strict"] == res["packed"]
    assert n_hits > 0
    mean = mean_metrics(rows["packed"])
    assert mean["num_samples"] == 100
    assert 0 < mean["recall@20"] <= 1 and mean["recall@5"] <= mean["recall@10"] <= mean["recall@20"]


def test_reddit_perturbed_completions_packed_differs_from_strict(reddit):
    """Insert out-of-catalog lines, seen items and duplicates into real completions."""
    cat, samples = reddit
    rng = random.Random(1234)
    n_differ = 0
    for s in samples:
        gt, seen = _reddit_gt_seen(cat, s)
        lines = s["completion"][0]["content"].split("\n")
        extra_seen = set(seen)
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["ooc", "seen", "dup", "prose"])
            pos = rng.randint(0, len(lines))
            if kind == "ooc":
                lines.insert(pos, f"Totally Invented Film {rng.randint(0, 999)} (2001)")
            elif kind == "seen":
                iid = rng.randrange(len(cat))
                extra_seen.add(iid)
                lines.insert(pos, cat.display(iid))
            elif kind == "dup" and lines:
                lines.insert(pos, rng.choice(lines))
            else:
                lines.insert(pos, "Here are a few more:")
        text = "\r\n".join(lines)
        j = judge(text, cat, gt, extra_seen)
        res = _check_sample(j, gt, extra_seen, cat)
        hit_ranks = [k for k, st in enumerate(j.status[:20]) if st == "hit"]
        dropped_before_a_hit = bool(hit_ranks) and any(
            st in ("seen", "out_of_catalog") for st in j.status[: hit_ranks[-1]]
        )
        if dropped_before_a_hit:
            # a hit moved up in the packed list: packed NDCG@20 is strictly higher
            assert res["packed"]["ndcg@20"] > res["strict"]["ndcg@20"]
            n_differ += 1
    assert n_differ >= 5


def _redial_rows(limit=300):
    rows = []
    with open(require(REDIAL_DIR / "test_data"), encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    return rows


def test_redial_conversations_vs_reference():
    """Completion = the conversation's real movie-mention names in order of first mention (ReDial's own
    spellings: double spaces, undated names); GT = the recommender's mentions; seen = the seeker's."""
    cat = load_catalog(require(REDIAL_DIR / "movies_with_mentions.csv"))
    mention = re.compile(r"@(\d+)")
    n_self, n_dated, n_ooc = 0, 0, 0
    for conv in _redial_rows():
        names = conv["movieMentions"]
        order, gt, seen = [], [], set()
        for msg in conv["messages"]:
            for mid in mention.findall(msg["text"]):
                if mid not in names or not isinstance(names[mid], str):
                    continue
                if mid not in order:
                    order.append(mid)
                if msg["senderWorkerId"] == conv["respondentWorkerId"]:
                    gt.append(int(mid))
                else:
                    seen.add(int(mid))
        seen -= set(gt)  # a movie the recommender suggests is ground truth even if the seeker named it
        text = "\n".join(names[m] for m in order)
        j = judge(text, cat, gt, seen, require_year=False)
        _check_sample(j, gt, seen, cat)
        for m, it, iid in zip(order, j.items, j.ids):
            if it.year is not None:
                n_dated += 1
                n_self += iid == int(m)
            n_ooc += iid is None
    print(f"ReDial: {n_dated} dated mentions, {n_self} resolve to their own movieId, {n_ooc} unresolved")
    assert n_dated > 500 and n_self >= 0.95 * n_dated


def test_ml100k_synthetic_lists_vs_reference():
    """Lists written the way an LLM writes them ("The Title (Year)", sometimes MovieLens' "Title, The")
    against random ground truth / seen sets, with invented titles mixed in."""
    cat = load_catalog(require(ML100K_ITEM))
    dated = [it for it in cat if it["year"] is not None]
    rng = random.Random(7)
    for _ in range(150):
        picks = rng.sample(dated, 25)
        gt = [it["id"] for it in rng.sample(picks, rng.randint(0, 6))] + [rng.choice(dated)["id"]]
        seen = {it["id"] for it in rng.sample(picks, 2)}
        lines = []
        for it in picks:
            form = rng.random()
            if form < 0.15:
                lines.append(f"Invented Movie {rng.randint(0, 10**6)} ({it['year']})")
            elif form < 0.45:
                lines.append(f"{it['raw_title']} ({it['year']})")  # MovieLens' own spelling
            else:
                lines.append(f"{len(lines) + 1}. {display_title(it['raw_title'])} ({it['year']})")
        if rng.random() < 0.5:
            lines.insert(rng.randint(0, len(lines)), lines[rng.randrange(len(lines))])
        j = judge("Recommendations:\n" + "\n".join(lines), cat, gt, seen)
        _check_sample(j, gt, seen, cat)
        for m in (ranking_metrics(j, len(gt), protocol=p) for p in ("strict", "packed")):
            assert 0.0 <= m["ndcg@20"] <= 1.0 and 0.0 <= m["recall@20"] <= 1.0


def test_packed_filters_the_whole_list_before_cutting(toy_catalog):
    """Released protocol: invalid items are removed from the whole list, so a hit listed at rank 21 moves into
    the top 20 when earlier lines were out of catalog; strict keeps positions and never sees it."""
    statuses = ["out_of_catalog"] * 3 + ["miss"] * 17 + ["hit"]  # 21 parsed items, the hit is 21st
    items = [ParsedItem(f"t{k}", 2000, 0, 0, k) for k in range(21)]
    ids = [None] * 3 + list(range(100, 117)) + [7]
    j = judge_items(items, ids, groundtruth=[7])
    assert j.status == statuses
    packed = ranking_metrics(j, 1, ks=(20,), protocol="packed")
    strict = ranking_metrics(j, 1, ks=(20,), protocol="strict")
    assert strict["recall@20"] == 0.0
    # packed list = 17 misses then the hit at rank 18: recall 1, NDCG = 1/log2(19)
    assert packed["recall@20"] == 1.0
    assert packed["ndcg@20"] == pytest.approx(1 / math.log2(19))
    assert list(j.packed_rel(20)) == [0] * 17 + [1]
