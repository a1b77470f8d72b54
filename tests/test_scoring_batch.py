"""The batch scoring path (rewards.judge.match_texts / judge_id_lists, rewards.metrics.score_id_lists /
score_texts / batch_ranking_metrics) gives exactly what the per-sample path gives: the same ids, statuses and
metric values bit for bit (the per-sample path is itself checked against slow references in test_metrics.py)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import REDDIT_DIR, REDIAL_DIR, require
from rewards.catalog import Catalog, load_catalog, resolve_require_year
from rewards.judge import BatchJudgement, judge, judge_id_lists, judge_items, match_texts
from rewards.metrics import (
    batch_mean,
    batch_ranking_metrics,
    mean_metrics,
    ranking_metrics,
    score_id_lists,
    score_texts,
)

KS = (5, 10, 15, 20)


def _per_sample(texts, catalog, gts, seens, protocol, n_items=20, ks=KS, require_year=True):
    js = [judge(t, catalog, g, s, n_items=n_items, require_year=require_year) for t, g, s in zip(texts, gts, seens)]
    return js, [ranking_metrics(j, len(g), ks=ks, protocol=protocol, n_items=n_items) for j, g in zip(js, gts)]


def _assert_same(scores, judgements, rows):
    assert scores.judged.ids == [j.ids for j in judgements]
    assert scores.judged.status == [j.status for j in judgements]
    assert scores.rows() == rows  # exact float equality, key order included
    assert scores.mean() == mean_metrics(rows)


@pytest.fixture(scope="module")
def reddit_batch():
    from bench.bench_scoring import CATALOG, build_samples

    require(REDDIT_DIR)
    catalog = load_catalog(CATALOG)
    return catalog, *build_samples(catalog, 600, seed=3)


@pytest.mark.parametrize("protocol", ["packed", "strict"])
def test_score_texts_equals_per_sample_path_on_reddit(reddit_batch, protocol):
    catalog, texts, gts, seens = reddit_batch
    judgements, rows = _per_sample(texts, catalog, gts, seens, protocol)
    scores = score_texts(texts, catalog, gts, seens, ks=KS, protocol=protocol, n_items=20)
    _assert_same(scores, judgements, rows)
    counts = {s for st in scores.judged.status for s in st}
    assert counts == {"hit", "miss", "seen", "duplicate", "out_of_catalog"}  # the batch exercises every status


@pytest.mark.parametrize("require_year", [True, False])
def test_score_texts_equals_per_sample_path_on_redial_yearless(require_year):
    catalog = load_catalog(require(REDIAL_DIR / "movies_with_mentions.csv"))
    rng = random.Random(5)
    items = catalog.items
    texts, gts, seens = [], [], []
    for _ in range(300):
        picked = rng.sample(items, 25)
        lines = [catalog.display(it["id"]) if rng.random() < 0.8 else it["title"] for it in picked]
        lines.insert(0, "Here are some movies you might like:")
        texts.append("\n".join(f"{k}. {line}" for k, line in enumerate(lines)))
        gts.append([it["id"] for it in rng.sample(picked, 3)] + [rng.choice(items)["id"]])
        seens.append([rng.choice(picked)["id"]])
    for protocol in ("packed", "strict"):
        judgements, rows = _per_sample(texts, catalog, gts, seens, protocol, require_year=require_year)
        scores = score_texts(texts, catalog, gts, seens, protocol=protocol, require_year=require_year)
        _assert_same(scores, judgements, rows)
    if require_year:  # bare lines of yearless catalog movies are items; bare lines of dated ones are not
        yearless = {it["id"] for it in items if it["year"] is None}
        listed = {i for ids in scores.judged.ids for i in ids}
        assert listed & yearless


def _random_id_lists(rng, n, catalog_size=40):
    id_lists, gts, seens = [], [], []
    for _ in range(n):
        length = rng.choice([0, 1, 3, 19, 20, 21, 30])
        id_lists.append([None if rng.random() < 0.15 else rng.randrange(catalog_size) for _ in range(length)])
        gts.append([rng.randrange(catalog_size) for _ in range(rng.choice([0, 1, 2, 5, 12, 25]))])  # repeats too
        seens.append([rng.randrange(catalog_size) for _ in range(rng.randint(0, 4))])
    return id_lists, gts, seens


@pytest.mark.parametrize("protocol", ["packed", "strict"])
@pytest.mark.parametrize("n_items, ks", [(20, KS), (10, (0, 1, 3, 10, 25)), (1, (1, 2)), (0, (5,))])
def test_score_id_lists_equals_judge_items_plus_ranking_metrics(protocol, n_items, ks):
    rng = random.Random(n_items * 7 + len(ks))
    id_lists, gts, seens = _random_id_lists(rng, 400)
    scores = score_id_lists(id_lists, gts, seens, ks=ks, protocol=protocol, n_items=n_items)
    judgements = [judge_items([None] * len(ids), ids, g, s, n_items=n_items)  # items unused by the metrics
                  for ids, g, s in zip(id_lists, gts, seens)]
    rows = [ranking_metrics(j, len(g), ks=ks, protocol=protocol, n_items=n_items) for j, g in zip(judgements, gts)]
    _assert_same(scores, judgements, rows)
    # the ratios are THE Judgement definitions
    for j, row in zip(judgements, scores.rows()):
        assert row["catalog_hit_ratio"] == j.catalog_hit_ratio(n_items)
        assert row["valid_item_ratio"] == j.valid_item_ratio(n_items)
    # a list of Judgements is accepted as well, and gives the same arrays
    again = batch_ranking_metrics(judgements, ks=ks, protocol=protocol, n_items=n_items)
    assert all(np.array_equal(again[k], scores.metrics[k]) for k in scores.metrics)


def test_score_id_lists_hand_example():
    # GT {1, 2}; list: 1 (hit), None (out of catalog), 9 (seen), 1 (duplicate), 2 (hit)
    s = score_id_lists([[1, None, 9, 1, 2]], [[1, 2]], [[9]], ks=(2, 5), protocol="strict", n_items=5)
    assert s.judged.status == [["hit", "out_of_catalog", "seen", "duplicate", "hit"]]
    m = s.rows()[0]
    idcg = 1 + 1 / np.log2(3)
    assert m["recall@2"] == 0.5 and m["recall@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(6)) / idcg)
    assert m["catalog_hit_ratio"] == 4 / 5 and m["valid_item_ratio"] == 2 / 5
    p = score_id_lists([[1, None, 9, 1, 2]], [[1, 2]], [[9]], ks=(2, 5), protocol="packed", n_items=5).rows()[0]
    assert p["ndcg@5"] == pytest.approx((1 + 1 / np.log2(4)) / idcg)  # packed: 1, dup, 2 -> hits at ranks 1, 3
    assert p["recall@2"] == 0.5


def test_match_texts_equals_judge_ids_and_memo_is_reusable():
    cat = Catalog([
        {"id": 1, "title": "The Matrix", "year": 1999}, {"id": 2, "title": "Heat", "year": 1995},
        {"id": 3, "title": "Okja", "year": None}, {"id": 4, "title": "Heat", "year": 2020},
    ])
    texts = ["Here you go:\n1. The Matrix (1999)\n2. Okja\n3. Heat\n4. Nope (2001)\n\nEnjoy!",
             "Heat (1995)\r\nOkja\r\n- **The Matrix (1999)**", "", "Okja (2017)\nheat (2020)"]
    for require_year in (True, False):
        memo: dict = {}
        want = [judge(t, cat, [], require_year=require_year).ids for t in texts]
        assert match_texts(texts, cat, require_year, memo=memo) == want
        assert match_texts(texts, cat, require_year, memo=memo) == want  # memo filled: same answers
    assert match_texts(texts[:1], cat, True) == [[1, 3, None]]  # bare "Heat" (dated title) is no item
    with pytest.raises(TypeError):
        match_texts([None], cat)


def test_batch_mean_equals_mean_metrics_and_errors():
    rng = random.Random(0)
    id_lists, gts, seens = _random_id_lists(rng, 1000)
    s = score_id_lists(id_lists, gts, seens)
    assert batch_mean(s.metrics) == mean_metrics(s.rows())
    assert batch_mean({}) == {"num_samples": 0.0}
    with pytest.raises(ValueError, match="protocol"):
        score_id_lists([[1]], [[1]], protocol="loose")
    with pytest.raises(ValueError, match="id lists"):
        judge_id_lists([[1]], [[1], [2]])
    with pytest.raises(ValueError, match="differ in length"):
        BatchJudgement([[1]], [], np.zeros(1, dtype=np.int64))
    empty = score_id_lists([], [])
    assert empty.rows() == [] and all(len(v) == 0 for v in empty.metrics.values())


def test_require_year_is_resolved_once_from_the_catalog():
    dated = Catalog([{"id": 1, "title": "Heat", "year": 1995}])
    yearless = Catalog([{"id": 1, "title": "Zelda", "year": None}])
    assert resolve_require_year(dated) is True and resolve_require_year(yearless) is False
    assert resolve_require_year(yearless, True) is True
