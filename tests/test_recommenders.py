"""evaluation/recommenders.py: the recommender seam scores text exactly as score_completions does (real Reddit-v2
and MovieLens-100k data, both protocols), id recommenders (oracle, popularity, a ranker with out-of-catalog entries)
through the same metrics and files, id-only predictions files, and the one --max_samples subset rule."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from evaluation.backends import StaticBackend
from evaluation.evaluate import evaluate_recommender, metric_keys, score_completions, score_recommendations
from evaluation.predictions import PredictionsError, load_split, subset_rows
from evaluation.recommenders import (
    GroundtruthRecommender,
    PopularityRecommender,
    Recommendation,
    StaticPredictions,
    TextRecommender,
    text_item_ids,
)
from tests.conftest import REDDIT_DIR, require

KS = (5, 10, 15, 20)


def _contract(root: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_contract", Path(__file__).with_name("test_evaluation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_contract_dataset(root)


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    from preprocess.contract import load_processed

    path = _contract(tmp_path_factory.mktemp("rec"))
    dd, catalog = load_processed(path)
    return path, dd, catalog


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    """A small real MovieLens-100k build (the recbole wheel's files): 150 rows per split, 1,682 real titles."""
    from preprocess import movielens
    from preprocess.contract import load_processed

    out = tmp_path_factory.mktemp("ml") / "ml100k"
    movielens.build(None, out, max_samples_per_split=150, seed=3, progress=False, quiet=True)
    dd, catalog = load_processed(out)
    return out, dd, catalog


def perturbed_completions(targets: list[str], catalog, seens: list[list[int]], seed: int = 0) -> list[str]:
    """Model-like answers built from real target lists: numbering and bold, reordering, seen items and
    duplicates inserted, out-of-catalog and prose lines, yearless lines, lists longer than N, empty answers."""
    rng = random.Random(seed)
    titles = [catalog.display(i) for i in catalog.ids]
    out = []
    for k, (text, seen) in enumerate(zip(targets, seens)):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        kind = k % 6
        if kind == 1:
            lines = [f"{i + 1}. **{ln}**" for i, ln in enumerate(reversed(lines))]
        elif kind == 2 and seen:
            lines.insert(0, catalog.display(seen[0]))
            lines.insert(3, lines[1])  # a duplicate
        elif kind == 3:
            lines = ["Sure! Here are some picks:", "Not A Real Movie At All (1901)"] + lines + rng.sample(titles, 15)
        elif kind == 4:
            lines = [ln.rsplit(" (", 1)[0] for ln in lines[:5]] + lines[5:]  # yearless lines
        elif kind == 5:
            lines = [] if k % 12 == 5 else rng.sample(titles, 25)
        out.append("\n".join(lines))
    return out


def assert_same_scores(dataset, catalog, completions, protocol, require_year=None):
    """The seam (TextRecommender over a StaticBackend) vs today's score_completions: identical numbers."""
    answers = iter(completions)
    backend = StaticBackend(lambda prompt: next(answers))
    rows = [dict(r, prompt=[{"role": "user", "content": f"row {i}"}]) for i, r in enumerate(dataset)]  # distinct
    seam = evaluate_recommender(TextRecommender(backend, catalog, require_year), rows, catalog, None,
                                protocol=protocol)
    seam_metrics, seam_rows = score_recommendations(
        rows, catalog, StaticPredictions.from_texts(completions, catalog, require_year).recommend(rows),
        protocol=protocol)
    today, today_rows = score_completions(rows, catalog, completions, protocol=protocol, require_year=require_year)
    for key in metric_keys(KS) + ["num_parsed", "num_groundtruth", "num_samples"]:
        assert seam[key] == seam_metrics[key] == today[key], key
    assert seam["require_year"] == today["require_year"]
    for mine, theirs in zip(seam_rows, today_rows):
        assert mine == theirs
    return today


@pytest.mark.parametrize("protocol", ["packed", "strict"])
def test_text_through_the_seam_equals_score_completions_on_real_reddit(protocol):
    from rewards.catalog import load_catalog

    samples = json.loads(require(REDDIT_DIR / "sft_with_assigned_traits_test.json").read_text())["samples"]
    catalog = load_catalog(require(REDDIT_DIR / "gt_catalog.pkl"))
    rows = []
    for s in samples:
        gt = [catalog.match(t, int(y)) for t, y in s["groundtruth_with_release_year"]]
        seen = [i for i in (catalog.match(t) for t in s["seen_titles"]) if i is not None]
        rows.append({"sample_id": s["sample_id"], "groundtruth": gt, "seen": seen})
    targets = [s["completion"][0]["content"] for s in samples]
    completions = perturbed_completions(targets, catalog, [r["seen"] for r in rows])
    today = assert_same_scores(rows, catalog, completions, protocol)
    assert 0 < today["recall@20"] < 1 and 0 < today["catalog_hit_ratio"] < 1  # a non-trivial mix
    assert_same_scores(rows, catalog, targets, protocol)
    assert_same_scores(rows, catalog, completions, protocol, require_year=False)


@pytest.mark.parametrize("protocol", ["packed", "strict"])
def test_text_through_the_seam_equals_score_completions_on_ml100k(ml100k, protocol):
    _, dd, catalog = ml100k
    ds = dd["test"]
    targets = [c[0]["content"] for c in ds["completion"]]
    completions = perturbed_completions(targets, catalog, list(ds["seen"]), seed=1)
    today = assert_same_scores(ds, catalog, completions, protocol)
    assert 0 < today["ndcg@10"] < 1
    assert_same_scores(ds, catalog, completions, protocol, require_year=False)


def test_text_item_ids_are_the_judge_ids(ml100k):
    from rewards.judge import judge

    _, dd, catalog = ml100k
    for text in perturbed_completions([c[0]["content"] for c in dd["validation"]["completion"]], catalog,
                                      list(dd["validation"]["seen"]), seed=2)[:40]:
        for require_year in (True, False):
            assert text_item_ids(text, catalog, require_year) == judge(text, catalog, [], require_year=require_year).ids


# ------------------------------------------------------------------------------------------ id recommenders
@pytest.mark.parametrize("protocol", ["packed", "strict"])
def test_oracle_ids_score_one_and_its_text_form_is_today_oracle(contract, protocol, tmp_path):
    _, dd, catalog = contract
    ds = dd["validation"]
    metrics = evaluate_recommender(GroundtruthRecommender(catalog), ds, catalog, tmp_path, protocol=protocol)
    for k in KS:
        assert metrics[f"recall@{k}"] == metrics[f"ndcg@{k}"] == metrics[f"hr@{k}"] == 1.0
    assert metrics["catalog_hit_ratio"] == 1.0 and metrics["require_year"] is None
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert "completion" not in rows[0] and list(rows[0])[:2] == ["index", "sample_id"]
    assert rows[1]["item_ids"] == [11] and rows[1]["statuses"] == ["hit"]  # v1: gt [11], seen [10]
    as_text = evaluate_recommender(GroundtruthRecommender(catalog, as_text=True), ds, catalog, None,
                                   protocol=protocol)
    today, _ = score_completions(ds, catalog, GroundtruthRecommender(catalog).completions(ds), protocol=protocol)
    assert all(as_text[k] == today[k] for k in metric_keys(KS))


def test_popularity_ids_equal_its_text_form(contract):
    _, dd, catalog = contract
    ds = dd["test"]
    ids = PopularityRecommender(dd["train"], catalog, n_items=5).recommend(ds)
    # train counts 4, 3, 2 for items 3, 0, 14, then ties by id; s2 has seen [0]
    assert ids[0].item_ids == [3, 0, 14, 7, 9] and 0 not in ids[2].item_ids
    by_ids, _ = score_recommendations(ds, catalog, ids)
    today, _ = score_completions(ds, catalog, PopularityRecommender(dd["train"], catalog, n_items=5).completions(ds))
    text, _ = score_recommendations(ds, catalog,
                                    PopularityRecommender(dd["train"], catalog, 5, as_text=True).recommend(ds))
    assert all(by_ids[k] == today[k] == text[k] for k in metric_keys(KS))


class FakeRanker:
    """A recommender that is not text: fixed id lists (what a hidden-state ranker would return)."""

    def __init__(self, lists):
        self.lists = lists

    def recommend(self, dataset):
        return [Recommendation(list(ids)) for ids in self.lists]


def test_ranker_with_unmatched_entries_counts_them_like_text(contract):
    _, dd, catalog = contract
    ds = dd["validation"].select([0])  # gt [0, 23, 24], seen [13]
    metrics, rows = score_recommendations(ds, catalog, FakeRanker([[None, 23, 13, None, 23, 5]]).recommend(ds))
    assert rows[0]["statuses"] == ["out_of_catalog", "hit", "seen", "out_of_catalog", "duplicate", "miss"]
    assert metrics["catalog_hit_ratio"] == pytest.approx(4 / 6)  # in-catalog entries among those listed
    assert metrics["valid_item_ratio"] == pytest.approx(2 / 20)  # hit + miss among N = 20 positions
    assert metrics["recall@5"] == pytest.approx(1 / 3)
    # the same list written as text scores the same
    text = "\n".join(["Nope (1900)", "Inception (2010)", "Blade Runner (1982)", "Nada (1901)", "Inception (2010)",
                      "Casablanca (1942)"])
    today, today_rows = score_completions(ds, catalog, [text])
    assert today_rows[0]["statuses"] == rows[0]["statuses"]
    assert all(today[k] == metrics[k] for k in metric_keys(KS))


def test_bad_recommendations_are_clear_errors(contract):
    _, dd, catalog = contract
    ds = dd["validation"]
    with pytest.raises(ValueError, match="3 recommendations for 4 samples"):
        evaluate_recommender(FakeRanker([[0]] * 3), ds, catalog)
    with pytest.raises(ValueError, match=r"row 1: item_ids\[0\] = 999 is not a catalog id"):
        evaluate_recommender(FakeRanker([[0], [999], [], []]), ds, catalog)
    with pytest.raises(TypeError, match="Recommendation objects"):
        score_recommendations(ds, catalog, [[0]] * 4)


# ------------------------------------------------------------------------------------------ predictions files
def test_id_only_predictions_file_is_scorable_and_round_trips(contract, tmp_path):
    _, dd, catalog = contract
    ds = dd["test"]
    written = evaluate_recommender(PopularityRecommender(dd["train"], catalog), ds, catalog, tmp_path / "pop")
    path = tmp_path / "pop" / "predictions.jsonl"
    again = evaluate_recommender(StaticPredictions.from_file(path, catalog, len(ds), list(ds["sample_id"])), ds,
                                 catalog, tmp_path / "again")
    assert all(again[k] == written[k] for k in metric_keys(KS))
    assert (tmp_path / "again" / "predictions.jsonl").read_text() == path.read_text()

    # a hand-written id file: a text row, an id row with an unmatched entry, a row left out
    lines = [json.dumps({"index": 0, "completion": "Heat (1995)"}),
             json.dumps({"index": 1, "item_ids": [None, 2]}),
             json.dumps({"index": 3, "completion": "Heat (1995)", "item_ids": [5]})]  # text wins
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    preds = StaticPredictions.from_file(tmp_path / "mixed.jsonl", catalog, len(ds))
    assert preds.missing == [2, 4, 5]
    assert [r.item_ids for r in preds.recommend(ds)[:4]] == [[2], [None, 2], [], [2]]


@pytest.mark.parametrize("record, fragment", [
    ({"index": 0, "item_ids": 3}, "must be a list"),
    ({"index": 0, "item_ids": [1, True]}, "item_ids[1] must be an int or null"),
    ({"index": 0, "item_ids": [1, "2"]}, "item_ids[1] must be an int or null"),
    ({"index": 0, "item_ids": [1, 99]}, "item_ids[1] = 99 is not an id of the catalog"),
    ({"index": 0}, "missing field 'completion' (or 'item_ids')"),
])
def test_item_id_errors_name_file_and_line(contract, tmp_path, record, fragment):
    _, dd, catalog = contract
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"index": 1, "item_ids": [1]}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(PredictionsError) as err:
        StaticPredictions.from_file(path, catalog, 6)
    assert f"{path}: line 2:" in str(err.value) and fragment in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------------- subsets
def test_subset_rule_is_seeded_nested_and_in_split_order():
    assert subset_rows(10, None) is None and subset_rows(10, 10) is None and subset_rows(10, 50) is None
    small, large = subset_rows(1000, 50, seed=7), subset_rows(1000, 200, seed=7)
    assert small == sorted(small) and len(set(small)) == 50 and set(small) <= set(large)
    assert small == subset_rows(1000, 50, seed=7) and small != subset_rows(1000, 50, seed=8)
    assert small != list(range(50))  # not the first rows
    assert subset_rows(5, 0) == []
    with pytest.raises(ValueError):
        subset_rows(5, -1)


def test_subset_predictions_keep_split_indices(contract, tmp_path):
    """eval_test --max_samples scores the seeded subset; its predictions carry split indices, so a predictions file
    of the full split scored with the same --max_samples gives the same numbers."""
    import eval_test

    path, dd, catalog = contract
    common = ["--dataset_path", str(path), "--split", "test", "--max_samples", "3", "--seed", "1"]
    full = tmp_path / "full.jsonl"
    full.write_text("".join(json.dumps({"index": i, "sample_id": dd["test"][i]["sample_id"], "completion": t}) + "\n"
                            for i, t in enumerate(GroundtruthRecommender(catalog).completions(dd["test"]))))
    sub = eval_test.main(["--predictions", str(full), "--output_dir", str(tmp_path / "sub"), *common])
    rows = [json.loads(line) for line in (tmp_path / "sub" / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == subset_rows(6, 3, seed=1)
    assert [r["sample_id"] for r in rows] == [dd["test"][i]["sample_id"] for i in subset_rows(6, 3, seed=1)]
    assert sub["num_samples"] == 3 and sub["recall@20"] == 1.0 and sub["num_missing_predictions"] == 0
    again = eval_test.main(["--predictions", str(tmp_path / "sub" / "predictions.jsonl"),
                            "--output_dir", str(tmp_path / "again"), *common])
    assert all(again[k] == sub[k] for k in metric_keys(KS)) and again["num_missing_predictions"] == 0
    data = load_split(path, "test", max_samples=3, seed=1)
    assert data.rows == subset_rows(6, 3, seed=1) and list(data.dataset["sample_id"]) == [r["sample_id"] for r in rows]
