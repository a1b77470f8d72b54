"""Scoring on catalogs the movie fixtures never showed (issue 20, scoring part): long yearless product titles, list
numbers inside titles, duplicate titles, alternative (a.k.a.) titles, NFD spellings, unreachable targets and
title -> string-id catalogs. Each test asserts the exact id, score or refusal; scores are checked against values
written out from the definitions (DCG = sum rel_k / log2(k + 1), IDCG over min(|GT|, K) ones)."""
from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import AMAZON_DIR, REDDIT_DIR, REPO, require
from rewards.catalog import Catalog, CatalogError, load_catalog
from rewards.titles import normalize_title
from rewards.judge import judge, judge_batch, match_texts
from rewards.metrics import score_texts

FIXTURE_CSV = REPO / "tests" / "fixtures" / "amazon_csv_long"

# 21 words: the prose rule "more than 15 words" fires on it
LONG = ("Wireless Controller for PS4 with Dual Vibration, Touch Pad, Six Axis Motion Sensor, Speaker, Headphone Jack "
        "and USB Charging Cable, Black")
# 15 words ending in ".": the prose rule "6+ words ending in '.'" fires on it
SENTENCE = "This compact dual charging dock holds two controllers and fully charges them in three hours."
PRODUCTS = Catalog([
    {"id": 0, "title": LONG, "year": None},
    {"id": 1, "title": SENTENCE, "year": None},
    {"id": 2, "title": "#10 Solid Rubber Stopper", "year": None},
    {"id": 3, "title": "Solid Rubber Stopper", "year": None},
    {"id": 4, "title": "Racing Wheel Stand Pro for Logitech G29", "year": None},
    {"id": 5, "title": "Racing Wheel Stand Pro for Logitech G29", "year": None},
    {"id": 6, "title": "Here's Looking at You: The Detective Board Game", "year": None},
    {"id": 7, "title": "Splatoon 2", "year": None},
])


def dcg(rel):
    return sum(r / math.log2(k + 2) for k, r in enumerate(rel))


def ndcg(rel, n_gt, k):
    ideal = dcg([1.0] * min(n_gt, k))
    return dcg(rel[:k]) / ideal if ideal else 0.0


def test_reference_ndcg_values():
    assert ndcg([0, 1], 1, 20) == pytest.approx(1 / math.log2(3)) and ndcg([1, 0, 1], 2, 20) == pytest.approx(
        (1 + 0.5) / (1 + 1 / math.log2(3)))


# ============================================================================== 1. long titles are items
def test_prose_shaped_catalog_titles_are_items_and_prose_is_not():
    assert len(LONG.split()) == 21 and len(SENTENCE.split()) == 15 and SENTENCE.endswith(".")
    text = ("Here are some great picks for you based on your history:\n"
            f"1. {LONG}\n"
            f"2. {SENTENCE}\n"
            "I think you will really enjoy playing all of these with your friends.\n"
            "3. Here's Looking at You: The Detective Board Game\n"
            "Let me know if you want more.")
    j = judge(text, PRODUCTS, [1], require_year=False)
    assert j.ids == [0, 1, 6] and j.status == ["miss", "hit", "miss"]
    assert [it.line for it in j.items] == [1, 2, 4]
    s = score_texts([text], PRODUCTS, [[1]], ks=(1, 20), protocol="strict", require_year=False).rows()[0]
    assert s["ndcg@1"] == 0.0 and s["ndcg@20"] == pytest.approx(ndcg([0, 1, 0], 1, 20)) == pytest.approx(0.6309297)
    assert s["num_parsed"] == 3.0  # the two sentences to the user are not items


def test_a_prose_line_needs_an_exact_full_title_no_fuzzy_no_alternative_name():
    cat = Catalog([{"id": 0, "title": LONG, "year": None},
                   {"id": 1, "title": "Controller Stand (I think you will really enjoy playing all of these games.)",
                    "year": None}], fuzzy_threshold=80)
    near = LONG.replace("Black", "White")  # a fuzzy match of the long title, not the title
    assert judge(near, cat, [0], require_year=False).ids == []  # prose, and not exactly a title: no item
    assert match_texts([near], cat, require_year=False) == [[]]
    assert judge("I think you will really enjoy playing all of these games.", cat, [1], require_year=False).ids == []
    assert judge(LONG.upper(), cat, [0], require_year=False).ids == [0]  # matcher's normalisation still applies


@pytest.mark.parametrize("line, expected", [
    ("#10 Solid Rubber Stopper", 2),  # the number is part of a catalog title: kept
    ("1. #10 Solid Rubber Stopper", 2),  # list numbering, then the title
    ("- **#10 Solid Rubber Stopper**", 2),
    ("#1 Solid Rubber Stopper", 3),  # "#1 ..." is no title: it is list numbering
    ("2. Solid Rubber Stopper", 3),
    ("Solid Rubber Stopper", 3),
])
def test_list_number_stripping_keeps_a_number_that_is_part_of_the_title(line, expected):
    assert judge(line, PRODUCTS, [], require_year=False).ids == [expected]
    assert match_texts([line], PRODUCTS, require_year=False) == [[expected]]


def test_real_titles_that_start_with_a_number_survive_list_numbering():
    """Rank-GRPO's Reddit catalog: every title "<N> <rest>" ("12 Angry Men", "2 Fast 2 Furious") written as the
    numbered line "<N>. <rest> (Year)" names that title (the numbered form is a catalog title itself)."""
    cat = load_catalog(require(REDDIT_DIR / "gt_catalog.pkl"))
    titles = [it for it in cat if it["year"] is not None and it["title"].split(" ", 1)[0].isdigit()
              and len(it["title"].split(" ", 1)) == 2]
    assert len(titles) == 33
    lines = [f"{it['title'].replace(' ', '. ', 1)} ({it['year']})" for it in titles]
    assert [ids[0] for ids in match_texts(lines, cat)] == [cat.match(it["title"], it["year"]) for it in titles]


def test_a_yearless_title_ending_in_a_year_is_its_item():
    cat = Catalog([{"id": 0, "title": "NVIDIA SHIELD Controller (2015)", "year": None},
                   {"id": 1, "title": "Heat", "year": 1995}])
    assert judge("NVIDIA SHIELD Controller (2015)\nNVIDIA SHIELD Controller (2016)\nHeat (1995)", cat, [0]).ids == [
        0, None, 1]


def test_a_numbered_movie_title_keeps_its_number():
    cat = Catalog([{"id": 0, "title": "#1 Cheerleader Camp", "year": 2010},
                   {"id": 1, "title": "Cheerleader Camp", "year": 1988}])
    assert judge("#1 Cheerleader Camp (2010)\n1. Cheerleader Camp (1988)", cat, [0, 1]).ids == [0, 1]


def test_duplicate_titles_are_one_item_for_text_and_ids():
    """Entries 4 and 5 share a title: no line can name 5, so 5 is scored as 4 (the MovieLens builder's merge rule)."""
    assert PRODUCTS.merged_ids == {5: 4} and PRODUCTS.canonical_id(5) == 4 and PRODUCTS.canonical_id(99) == 99
    line = "Racing Wheel Stand Pro for Logitech G29"
    for gt in ([5], [4], [4, 5], [5, 4]):
        j = judge(line, PRODUCTS, gt, require_year=False)
        assert j.status == ["hit"] and j.n_groundtruth == 1, gt
    assert PRODUCTS.canonical_groundtruth([5, 7, 5]) == [4, 7]  # a pair the mapping made is one item
    assert PRODUCTS.canonical_groundtruth([7, 7]) == [7, 7]  # other repeats stay (the multiset rule)
    assert judge(line, PRODUCTS, [7], seen=[5], require_year=False).status == ["seen"]
    from evaluation.evaluate import score_recommendations
    from evaluation.recommenders import Recommendation

    rows = [{"sample_id": "a", "groundtruth": [5], "seen": []}, {"sample_id": "b", "groundtruth": [4], "seen": []}]
    metrics, per = score_recommendations(rows, PRODUCTS, [Recommendation([5]), Recommendation([5, 4])], ks=(1,))
    assert [p["statuses"] for p in per] == [["hit"], ["hit", "duplicate"]] and metrics["ndcg@1"] == 1.0
    assert [p["item_ids"] for p in per] == [[5], [5, 4]]  # the recommender's own ids are what is written out


def test_training_rewards_use_the_same_rules():
    from methods.rank_grpo.list_judge import ListJudge, rank_reward_sum_func, score_completion, sequence_reward_func

    text = f"{LONG}\n#10 Solid Rubber Stopper\nRacing Wheel Stand Pro for Logitech G29"
    s = score_completion(text, PRODUCTS, [2, 5], [], ended_with_eos=True, n_items=3, require_year=False)
    assert s.rel.tolist() == [0.0, 1.0, 1.0] and s.n_parsed == 3 and s.n_groundtruth == 2
    args = SimpleNamespace(n_items=3, overflow_penalty=-0.1, early_stop_penalty=-0.1, eos_bonus=0.0,
                           reward_func="exp_inf")
    lj = ListJudge(PRODUCTS, args, False, lambda ids: text, {99})
    kw = dict(prompts=[None], completions=[None], completion_ids=[[1, 99]], groundtruth=[[2, 5]], seen=[[]])
    assert sequence_reward_func(lj, "ndcg")(**kw) == [pytest.approx(ndcg([0, 1, 1], 2, 3))]
    assert rank_reward_sum_func(lj, "exp_inf")(**kw) == [2.0]
    from methods.deeprec.rollout import answer_item_ids
    from evaluation.recommenders import text_item_ids

    assert text_item_ids(text, PRODUCTS, False) == answer_item_ids(text.split("\n"), PRODUCTS, False) == [0, 2, 4]
    assert judge_batch([text], PRODUCTS, [[2, 5]], require_year=False).status == [["miss", "hit", "hit"]]


def test_deeprec_outcome_reward_reaches_a_duplicate_title_target():
    from test_deeprec import valid_text
    from methods.deeprec.judge import DeepRecJudge

    cat = Catalog([{"id": i, "title": f"Game Number {i}", "year": None} for i in range(10)]
                  + [{"id": 10, "title": "Game Number 3", "year": None}])  # 10 is a twin of 3
    answer = [f"Game Number {i}" for i in range(10)]  # the target's title at 0-based rank 3
    scores = DeepRecJudge(cat, False, None, lambda texts: None).score([{"text": valid_text(1, answer)}] * 2, [10, 3],
                                                                      need_similarity=False)
    # R_out = 1 + 0.2 (10 - i), i = 3 for the target 10 (named by its twin's title) as for 3
    assert [sc.rewards["outcome"] for sc in scores] == [pytest.approx(1 + 0.2 * (10 - 3))] * 2


def test_fixture_oracle_and_popularity_by_text_equal_by_ids(tmp_path, capsys):
    """The hand-written BIGRec/D3-layout fixture: before the fix the oracle scored 5/11 = 0.4545 and popularity
    by text 0.2107 vs 0.4137 by ids (NDCG@20)."""
    from preprocess.amazon.csv_files import build_csv
    from preprocess.contract import load_processed
    from evaluation.evaluate import evaluate_recommender
    from evaluation.recommenders import GroundtruthRecommender, PopularityRecommender

    build_csv(FIXTURE_CSV, tmp_path / "out", category="Video_Games", progress=False, quiet=True,
              item_index=str(FIXTURE_CSV / "Video_Games.item.json"))
    dd, cat = load_processed(tmp_path / "out")
    assert cat.merged_ids == {5: 4, 9: 8}  # the duplicate pair and the NFD twin of "Amélie Puzzle Adventure"
    ks = (1, 5, 10, 20)
    oracle = evaluate_recommender(GroundtruthRecommender(cat, as_text=True), dd["test"], cat, ks=ks)
    assert [oracle[f"ndcg@{k}"] for k in ks] == [1.0] * 4 and oracle["num_samples"] == 9
    # u3 has the duplicate twin of its target in its history, u10 bought its target before: unreachable
    assert oracle["num_groundtruth_in_seen"] == 2 and oracle["num_unscorable"] == 2
    by_text = evaluate_recommender(PopularityRecommender(dd["train"], cat, as_text=True), dd["test"], cat, ks=ks)
    by_ids = evaluate_recommender(PopularityRecommender(dd["train"], cat), dd["test"], cat, ks=ks)
    assert {k: by_text[f"ndcg@{k}"] for k in ks} == {k: by_ids[f"ndcg@{k}"] for k in ks}
    assert by_text["recall@20"] == 1.0 and by_text["ndcg@20"] == pytest.approx(0.5404, abs=1e-4)


def test_real_amazon18_titles_each_name_their_item():
    """Every one of the 16,859 Amazon-2018 Video Games titles, written alone on a line, is matched to its entry
    (908 of them read as prose); the reference groups titles by the matcher's key and spelling, first id wins."""
    lines = require(AMAZON_DIR / "Games.item").read_text(encoding="utf-8").splitlines()[1:]
    items = [{"id": int(i), "title": t, "year": None} for i, t in (ln.split("\t", 1) for ln in lines if ln.strip())]
    cat = Catalog(items)
    first: dict = {}
    expected = []
    for it in cat:
        key = (normalize_title(it["title"]), unicodedata.normalize("NFC", it["title"]).casefold())
        expected.append(first.setdefault(key, it["id"]))
    got = match_texts([it["title"] for it in cat], cat, require_year=False)
    assert len(got) == 16859 and [g[0] if len(g) == 1 else g for g in got] == expected
    assert len(cat.merged_ids) == sum(e != it["id"] for e, it in zip(expected, cat))


# ============================================================================== 2. alternative titles
AKA = Catalog([
    {"id": 32, "title": "Twelve Monkeys (a.k.a. 12 Monkeys)", "year": 1995},
    {"id": 47, "title": "Seven (a.k.a. Se7en)", "year": 1995},
    {"id": 293, "title": "Léon: The Professional (a.k.a. The Professional) (Léon)", "year": 1994},
    {"id": 900, "title": "The Professional", "year": 1981},
])


@pytest.mark.parametrize("line, expected", [
    ("Twelve Monkeys (a.k.a. 12 Monkeys) (1995)", 32), ("Twelve Monkeys (1995)", 32), ("12 Monkeys (1995)", 32),
    ("Seven (1995)", 47), ("Se7en (1995)", 47), ("Seven (a.k.a. Se7en) (1995)", 47),
    ("Léon: The Professional (1994)", 293), ("The Professional (1994)", 293), ("Léon (1994)", 293),
    ("Leon (1994)", 293), ("The Professional (1981)", 900), ("12 Monkeys (1971)", None),
])
def test_every_name_of_an_entry_matches_with_its_year(line, expected):
    assert judge(line, AKA, []).ids == [expected]


def test_ml_latest_aka_titles_through_the_builder(tmp_path):
    from preprocess import movielens

    raw = tmp_path / "raw"
    raw.mkdir()
    movies = ['32,Twelve Monkeys (a.k.a. 12 Monkeys) (1995),Sci-Fi', '47,Seven (a.k.a. Se7en) (1995),Thriller',
              '293,"Léon: The Professional (a.k.a. The Professional) (Léon) (1994)",Action', '1,Heat (1995),Action']
    (raw / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(movies) + "\n", encoding="utf-8")
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},4.0,{1000 * u + k}\n" for u in (1, 2) for k, m in enumerate((1, 32, 47, 293))), encoding="utf-8")
    movielens.build(raw, tmp_path / "out", min_history=1, progress=False, quiet=True)
    cat = load_catalog(tmp_path / "out" / "catalog.json")
    text = "12 Monkeys (1995)\nSe7en (1995)\nThe Professional (1994)\nTwelve Monkeys (1995)"
    assert judge(text, cat, [32, 47, 293]).status == ["hit", "hit", "hit", "duplicate"]


# ============================================================================== 3. Unicode NFC
def test_nfd_and_nfc_spellings_are_one_entry():
    nfc, nfd = "Am\u00e9lie", "Ame\u0301lie"
    assert nfc != nfd and unicodedata.normalize("NFC", nfd) == nfc
    cat = Catalog([{"id": 1, "title": nfc, "year": 2001}, {"id": 2, "title": nfd, "year": 2001},
                   {"id": 3, "title": "Amelie", "year": 2001}])  # a different spelling stays its own entry
    assert cat[2]["title"] == nfc and cat.merged_ids == {2: 1}
    assert [cat.match(f"{t} (2001)") for t in (nfc, nfd, "Amelie")] == [1, 1, 3]
    assert judge(f"{nfd} (2001)", cat, [2]).status == ["hit"]


def test_builders_merge_an_nfd_twin(tmp_path):
    from preprocess import movielens

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "movies.csv").write_text("movieId,title,genres\n1,Am\u00e9lie (2001),Comedy\n2,Ame\u0301lie (2001),Comedy\n"
                                    "3,Heat (1995),Action\n", encoding="utf-8")
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,3,4.0,10\n1,2,4.0,20\n2,3,4.0,10\n"
                                     "2,1,4.0,20\n", encoding="utf-8")
    summary = movielens.build(raw, tmp_path / "out", min_history=1, progress=False, quiet=True)
    rows = json.loads((tmp_path / "out" / "catalog.json").read_text(encoding="utf-8"))
    assert [r.get("duplicate_of") for r in rows] == [None, 1, None]
    assert "duplicate catalog entries merged (kept in catalog.json with duplicate_of)" in json.dumps(summary)
    from preprocess.contract import load_processed

    dd, _ = load_processed(tmp_path / "out")
    targets = sorted(g for split in dd for gt in dd[split]["groundtruth"] for g in gt)
    assert targets == [1, 1]  # both users' Amélie is movie 1


# ============================================================================== 4. unreachable targets
def test_rows_whose_groundtruth_is_all_seen_are_counted_and_left_out(capsys):
    from evaluation.evaluate import format_metrics, score_completions

    cat = Catalog([{"id": i, "title": t, "year": None} for i, t in enumerate(["Alpha Game", "Beta Game", "Gamma"])])
    rows = [{"sample_id": "r0", "groundtruth": [0], "seen": [1]},
            {"sample_id": "r1", "groundtruth": [1], "seen": [1]},  # repeat purchase: unreachable
            {"sample_id": "r2", "groundtruth": [], "seen": []},
            {"sample_id": "r3", "groundtruth": [0, 2], "seen": [2]}]  # one of two seen: still scored
    texts = ["Beta Game\nAlpha Game", "Beta Game", "Alpha Game", "Alpha Game"]
    metrics, per = score_completions(rows, cat, texts, ks=(1, 2), protocol="strict", require_year=False)
    assert (metrics["num_samples"], metrics["num_unscorable"], metrics["num_empty_groundtruth"],
            metrics["num_groundtruth_in_seen"]) == (2, 2, 1, 1)
    assert metrics["unscorable_sample_ids"] == ["r1", "r2"]
    assert [p.get("unscorable") for p in per] == [None, "every groundtruth item is in seen", "empty groundtruth", None]
    # r0: [seen, hit] -> NDCG@2 = (1/log2 3) / 1; r3: [hit] with |GT| = 2 -> 1 / (1 + 1/log2 3)
    assert metrics["ndcg@2"] == pytest.approx((ndcg([0, 1], 1, 2) + ndcg([1], 2, 2)) / 2)
    err = capsys.readouterr().err
    assert "1 of 4 rows cannot be scored (every groundtruth item is in seen)" in err
    assert "1 of 4 rows cannot be scored (empty groundtruth)" in err
    table = format_metrics(metrics, (1, 2))
    assert "WARNING: 1 rows have every ground-truth item in seen" in table and "1 rows have an empty" in table


# ============================================================================== 16. title -> string id maps
def _entity_map(tmp_path, mapping) -> Path:
    path = tmp_path / "entity2id.json"
    path.write_text(json.dumps(mapping, ensure_ascii=False), encoding="utf-8")
    return path


def test_a_title_to_string_id_map_is_a_catalog_and_keeps_its_ids(tmp_path):
    from evaluation.evaluate import evaluate_recommender
    from evaluation.recommenders import StaticPredictions

    path = _entity_map(tmp_path, {"Heat (1995)": "m_0007", "Alien (1979)": "00042", "Fargo (1996)": "Q222720",
                                  "The Mummy": "m_9"})
    cat = load_catalog(path)
    assert cat.ids == ["m_0007", "00042", "Q222720", "m_9"] and cat.has_string_ids
    assert cat["00042"] == {"id": "00042", "title": "Alien", "year": 1979} and cat["m_9"]["year"] is None
    assert judge("Fargo (1996)\nAlien (1979)\nNot A Film (2001)", cat, ["00042"]).ids == ["Q222720", "00042", None]
    rows = [{"sample_id": "s0", "groundtruth": ["00042"], "seen": []},
            {"sample_id": "s1", "groundtruth": ["Q222720", "m_0007"], "seen": ["m_9"]}]
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"index": 0, "sample_id": "s0", "item_ids": ["m_0007", "00042"]}\n'
                     '{"index": 1, "sample_id": "s1", "completion": "Heat (1995)\\nThe Mummy"}\n', encoding="utf-8")
    rec = StaticPredictions.from_file(preds, cat, 2, sample_ids=["s0", "s1"])
    m = evaluate_recommender(rec, rows, cat, tmp_path / "eval", ks=(2,), protocol="strict")
    # s0: [miss, hit] |GT| 1; s1: [hit, seen] |GT| 2
    assert m["ndcg@2"] == pytest.approx((ndcg([0, 1], 1, 2) + ndcg([1, 0], 2, 2)) / 2)
    written = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [w["item_ids"] for w in written] == [["m_0007", "00042"], ["m_0007", "m_9"]]


@pytest.mark.parametrize("mapping, fragment", [
    ({}, "empty JSON object"),
    ({"Heat (1995)": ["m1"]}, "key 'Heat (1995)': the id must be a non-empty string or an int, got ['m1']"),
    ({"Heat (1995)": ""}, "the id must be a non-empty string or an int"),
    ({"Heat (1995)": True}, "the id must be a non-empty string or an int, got True"),
    ({"Heat (1995)": "m1", "Alien (1979)": "m1"}, "key 'Alien (1979)': id 'm1' is also the id of 'Heat (1995)'"),
    ({" ": "m1"}, "an empty title maps to id 'm1'"),
    ({"1": "Heat (1995)", "2": "Alien (1979)"}, "looks like an id -> title map"),
])
def test_bad_title_maps_are_refused_naming_the_file_and_key(tmp_path, mapping, fragment):
    path = _entity_map(tmp_path, mapping)
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert str(path) in str(err.value) and fragment in str(err.value), str(err.value)


def test_string_ids_in_predictions_need_a_catalog_with_string_ids(tmp_path):
    from evaluation.predictions import PredictionsError, read_prediction_records

    cat = load_catalog(_entity_map(tmp_path, {"Heat (1995)": "m1"}))
    int_cat = Catalog([{"id": 1, "title": "Heat", "year": 1995}])
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"index": 0, "item_ids": ["m2"]}\n', encoding="utf-8")
    with pytest.raises(PredictionsError, match=r"p.jsonl: line 1: item_ids\[0\] = 'm2' is not an id of the catalog"):
        read_prediction_records(preds, 1, catalog=cat)
    preds.write_text('{"index": 0, "item_ids": ["1"]}\n', encoding="utf-8")
    with pytest.raises(PredictionsError, match=r"line 1: item_ids\[0\] must be an int or null, got '1'"):
        read_prediction_records(preds, 1, catalog=int_cat)
