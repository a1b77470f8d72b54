"""Builders and the processed-data contract (preprocess/)."""
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import datasets
import numpy as np
import pytest

from preprocess import movielens, reddit_v2, redial
from preprocess.common import (
    CONVERSATION_MARKER,
    GT_BEYOND_N_ITEMS_NOT_WRITTEN,
    GT_UNDATED_NOT_WRITTEN,
    RANK_GRPO_INSTRUCTION,
    SkipCounter,
    assign_split,
    build_prompt,
    format_completion,
    groundtruth_completion_ids,
    hash_split,
    pad_with_popular,
    split_from_name,
)
from preprocess.contract import DataError, load_processed, save_processed
from preprocess.movielens.readers import detect_layout, recbole_ml100k_dir
from rewards.catalog import Catalog
from tests.conftest import REDDIT_DIR, REDIAL_DIR, REPO, require

LINE = re.compile(r"^(?P<title>.+) \((?P<year>\d{4})\)$")
REDDIT_JSON = "sft_with_assigned_traits_test.json"


def flat_ids(ds, column):
    """All ids of a list[int] column as a numpy array (pyarrow, no Python-object round trip)."""
    return ds.data.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)


def catalog_ids(path):
    return {it["id"] for it in json.loads((Path(path) / "catalog.json").read_text(encoding="utf-8"))}


# ==============================================================================================================
# common.py
# ==============================================================================================================


def test_instruction_matches_real_reddit_prompts():
    doc = json.loads((require(REDDIT_DIR / REDDIT_JSON)).read_text(encoding="utf-8"))
    for s in doc["samples"]:
        content = s["prompt"][-1]["content"]
        conversation = content[content.index(CONVERSATION_MARKER) + len(CONVERSATION_MARKER):]
        assert build_prompt(conversation) == [{"role": "user", "content": content}]
    assert RANK_GRPO_INSTRUCTION.startswith("Pretend you are a movie recommender system.\nI will give you")
    assert RANK_GRPO_INSTRUCTION.endswith("with NO extra words or sentences.\nHere is the conversation: ")
    assert "reply with 5 recommendations" in build_prompt("x", n_items=5)[0]["content"]


def test_format_completion_and_padding():
    assert format_completion(["Heat (1995)", "Alien (1979)"]) == [
        {"role": "assistant", "content": "Heat (1995)\nAlien (1979)"}]
    with pytest.raises(ValueError):
        format_completion(["two\nlines"])
    assert pad_with_popular([5, 3], [1, 3, 2, 4, 6], exclude={2}, n=5) == [5, 3, 1, 4, 6]
    assert pad_with_popular([5], [1, 2], exclude=set(), n=5) == [5, 1, 2]  # popular list runs out
    assert pad_with_popular(list(range(30)), [99], exclude=set(), n=20) == list(range(20))


def test_groundtruth_completion_ids_counts_what_it_leaves_out():
    years = {1: 1990, 2: 1991, 3: None, 4: 1994, 7: 1997, 8: 1998}
    stats = Counter()
    # distinct dated GT in order (3 has no year; the repeated 2 is one line), cut to n=2, nothing left to pad
    assert groundtruth_completion_ids([1, 2, 2, 3, 4], years.get, [7, 8], seen=[], n_items=2, stats=stats) == [1, 2]
    assert stats == {GT_UNDATED_NOT_WRITTEN: 1, GT_BEYOND_N_ITEMS_NOT_WRITTEN: 1}
    # room left: padded with popular ids that are neither seen nor listed; nothing is left out
    stats = Counter()
    assert groundtruth_completion_ids([4], years.get, [4, 7, 8], seen=[7], n_items=3, stats=stats) == [4, 8]
    assert stats == {GT_UNDATED_NOT_WRITTEN: 0, GT_BEYOND_N_ITEMS_NOT_WRITTEN: 0}


def test_assign_split_named_hash_and_validation_carve_out():
    keys = [f"conv{i}" for i in range(2000)]
    assert [assign_split(k, None) for k in keys] == [hash_split(k) for k in keys]
    assert {assign_split(k, "test", carve_validation=0.5) for k in keys} == {"test"}  # only train is carved
    assert {assign_split(k, "train") for k in keys} == {"train"}
    carved = [assign_split(k, "train", carve_validation=0.1) for k in keys]
    assert set(carved) == {"train", "validation"} and 150 < carved.count("validation") < 250
    assert carved == [assign_split(k, "train", carve_validation=0.1) for k in keys]  # deterministic


def test_data_error_skip_counter_and_stable_split():
    err = DataError("data/train.jsonl", line=12, field="messages", reason="missing")
    assert str(err) == "data/train.jsonl, line 12, field 'messages': missing"
    assert isinstance(err, ValueError) and err.line == 12 and err.field == "messages"
    sc = SkipCounter()
    sc.skip("b")
    sc.skip("a", 3)
    sc.skip("b")
    sc.skip("zero", 0)
    assert sc.as_dict() == {"a": 3, "b": 2} and list(sc.as_dict()) == ["a", "b"] and sc.total == 5
    assert "a" in sc.format()
    # sha256-based: the same everywhere (not Python's salted hash()).
    assert [hash_split(k) for k in ("conv-1", "conv-2", "conv-3")] == \
        [hash_split(k) for k in ("conv-1", "conv-2", "conv-3")]
    # Pinned values: a change of the hashing would silently reshuffle every processed split.
    assert [hash_split(k) for k in ("20001", "a", "d", "f")] == ["validation", "train", "validation", "test"]
    counts = defaultdict(int)
    for i in range(2000):
        counts[hash_split(str(i))] += 1
    assert 1500 < counts["train"] < 1700 and 130 < counts["validation"] < 270 and 130 < counts["test"] < 270
    assert split_from_name("sft_train") == "train" and split_from_name("x_val") == "validation"
    assert split_from_name("test_data") == "test" and split_from_name("stuff") is None


def _record(sid="d/1", **kw):
    rec = {"sample_id": sid, "prompt": build_prompt("USER: hi"), "completion": format_completion(["A (2000)"]),
           "groundtruth": [1], "seen": [2], "history": [], "target": None, "timestamp": None}
    rec.update(kw)
    return rec


CAT = [{"id": 1, "title": "A", "year": 2000}, {"id": 2, "title": "B", "year": None}]


@pytest.mark.parametrize("bad, field", [
    ({"groundtruth": [1, 7]}, "groundtruth"),
    ({"seen": ["2"]}, "seen"),
    ({"groundtruth": []}, "groundtruth"),
    ({"target": 9}, "target"),
    ({"timestamp": 1.5}, "timestamp"),
    ({"prompt": [{"role": "assistant", "content": "x"}]}, "prompt"),
    ({"completion": [{"role": "assistant", "content": "x"}] * 2}, "completion"),
    ({"extra": 1}, "extra"),
])
def test_save_processed_validates_records(tmp_path, bad, field):
    with pytest.raises(DataError) as exc:
        save_processed(tmp_path / "out", {"train": [_record("d/ok"), _record("d/bad", **bad)]}, CAT, {}, quiet=True)
    msg = str(exc.value)
    assert "'train'" in msg and "'d/bad'" in msg and f"'{field}'" in msg
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_save_processed_rejects_duplicates_and_empty_catalog(tmp_path):
    with pytest.raises(DataError, match="duplicate sample_id"):
        save_processed(tmp_path / "o", {"train": [_record()], "test": [_record()]}, CAT, {}, quiet=True)
    with pytest.raises(DataError, match="catalog is empty"):
        save_processed(tmp_path / "o", {"train": [_record()]}, [], {}, quiet=True)
    with pytest.raises(DataError, match="duplicate id 1"):
        save_processed(tmp_path / "o", {"train": [_record()]}, CAT + [CAT[0]], {}, quiet=True)


def test_load_processed_round_trip(tmp_path, capsys):
    recs = {"train": [_record("d/1"), _record("d/2", target=1, timestamp=5, history=[2, 1])],
            "validation": [_record("d/3")], "test": []}
    summary = save_processed(tmp_path / "ds", recs, CAT, {"dataset": "d", "skipped": {"why": 3}})
    printed = capsys.readouterr().out
    assert "train" in printed and "why" in printed and "catalog items: 2" in printed
    assert summary["splits"]["train"]["samples"] == 2 and summary["splits"]["validation"]["items"] == 1
    assert json.loads((tmp_path / "ds" / "summary.json").read_text()) == summary
    dd, catalog = load_processed(tmp_path / "ds")
    assert list(dd) == ["train", "validation"]  # the empty split is not written
    assert dd["train"].to_list() == recs["train"] and dd["validation"].to_list() == recs["validation"]
    assert isinstance(catalog, Catalog) and len(catalog) == 2 and catalog.match("A", 2001) == 1
    # An external catalog must describe the same items.
    same = tmp_path / "same.json"
    same.write_text(json.dumps([{"id": 1, "title": "a", "year": 2000}, {"id": 2, "title": "B", "year": 1990}]))
    assert len(load_processed(tmp_path / "ds", catalog_path=same)[1]) == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"id": 1, "title": "A", "year": 2000}, {"id": 2, "title": "C", "year": None}]))
    with pytest.raises(DataError, match="other.json.*id 2"):
        load_processed(tmp_path / "ds", catalog_path=other)
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps([{"id": 1, "title": "A", "year": 2000}]))
    with pytest.raises(DataError, match="fewer.json.*1 items"):
        load_processed(tmp_path / "ds", catalog_path=fewer)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_processed(tmp_path / "nowhere")


# ==============================================================================================================
# MovieLens
# ==============================================================================================================


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    summary = movielens.build(None, out, progress=False, quiet=True)
    dd, catalog = load_processed(out)
    return out, summary, dd, catalog


def _ml100k_interactions(catalog_items):
    """(user, canonical item) -> first timestamp, read independently of the builder from the recbole files."""
    canon = {it["id"]: it.get("duplicate_of", it["id"]) for it in catalog_items}
    lines = (recbole_ml100k_dir() / "ml-100k.inter").read_text(encoding="utf-8").splitlines()[1:]
    first = {}
    for line in lines:
        u, i, _, t = line.split("\t")
        key = (u, canon[int(i)])
        first[key] = min(first.get(key, int(t)), int(t))
    return first


def test_ml100k_counts(ml100k):
    out, summary, dd, catalog = ml100k
    assert summary["read"] == {"users": 943, "items": 1682, "ratings": 100_000}
    assert len(catalog) == 1682 and len(catalog_ids(out)) == 1682
    assert list(dd) == ["train", "validation", "test"]
    st, sk = summary["stats"], summary["skipped"]
    # Every rating is accounted for: usable + skipped with a reason.
    assert st["usable ratings"] + sum(sk.values()) == 100_000
    assert sk["rating of an item without a release year (cannot be written as Title (Year))"] == 9  # item 267
    assert st["duplicate catalog entries merged (kept in catalog.json with duplicate_of)"] >= 18
    n = sum(len(dd[s]) for s in dd)
    assert n == st["usable ratings"] - 943 * 5  # every user has > 5 ratings: positions 5.. are samples
    assert {s: summary["splits"][s]["samples"] for s in dd} == {s: len(dd[s]) for s in dd}
    assert abs(len(dd["train"]) / n - 0.8) < 0.01 and abs(len(dd["test"]) / n - 0.1) < 0.01
    assert summary["splits"]["train"]["users"] > 700 and st["users with samples"] == 943
    cat = {it["id"]: it for it in json.loads((out / "catalog.json").read_text(encoding="utf-8"))}
    assert cat[12]["title"] == "The Usual Suspects" and cat[12]["raw_title"] == "Usual Suspects, The"
    assert cat[12]["year"] == 1995 and cat[12]["genres"] == ["Crime", "Thriller"] and cat[12]["popularity"] > 0
    assert cat[267]["year"] is None and cat[268]["duplicate_of"] == 246


def test_ml100k_no_time_leakage(ml100k):
    out, summary, dd, _ = ml100k
    ts = {s: np.array(dd[s]["timestamp"]) for s in dd}
    t1, t2 = summary["split_cuts"]["train_end"], summary["split_cuts"]["validation_end"]
    assert ts["train"].max() == t1 < ts["validation"].min()
    assert ts["validation"].max() == t2 < ts["test"].min()
    first = _ml100k_interactions(json.loads((out / "catalog.json").read_text(encoding="utf-8")))
    window = {"train": (-np.inf, t1), "validation": (t1, t2), "test": (t2, np.inf)}
    for s in dd:
        lo, hi = window[s]
        cols = dd[s].select_columns(["sample_id", "groundtruth", "target", "timestamp", "history"]).to_dict()
        for sid, gt, target, t, hist in zip(*cols.values()):
            user = sid.split("/")[1][1:]
            assert gt[0] == target and first[(user, target)] == t
            gt_ts = [first[(user, i)] for i in gt]
            assert gt_ts == sorted(gt_ts) and all(lo < x <= hi for x in gt_ts) and gt_ts[0] == t
            assert all(first[(user, i)] <= t for i in hist)


def test_ml100k_item_ratings_use_train_window_only(ml100k):
    """RecPO's item prompt fields: ``average_rating`` / ``rating_number`` of every item = the mean stars / count of
    its train-window ratings, recomputed here from the raw recbole file (each user's first rating of the merged item,
    yearless items left out); no validation or test rating reaches the catalog."""
    from preprocess.recpo_prompts import item_prompt

    out, summary, _, _ = ml100k
    items = json.loads((out / "catalog.json").read_text(encoding="utf-8"))
    canon = {it["id"]: it.get("duplicate_of", it["id"]) for it in items}
    yearless = {it["id"] for it in items if it["year"] is None}
    t1 = summary["split_cuts"]["train_end"]
    first: dict = {}  # (user, canonical item) -> (timestamp, stars) of the earliest rating, file order on ties
    lines = (recbole_ml100k_dir() / "ml-100k.inter").read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        u, i, r, t = line.split("\t")
        if int(i) in yearless:
            continue
        key = (u, canon[int(i)])
        if key not in first or int(t) < first[key][0]:
            first[key] = (int(t), float(r))
    stars = defaultdict(list)
    for (_, iid), (t, r) in first.items():
        if t <= t1:
            stars[iid].append(r)
    rated = 0
    for it in items:
        got = stars.get(it["id"], [])
        assert it["rating_number"] == it["popularity"] == len(got), it["id"]
        if got:
            rated += 1
            assert abs(it["average_rating"] - sum(got) / len(got)) <= 0.005 + 1e-9, it["id"]
        else:
            assert it["average_rating"] is None, it["id"]
    assert rated > 1500
    text = item_prompt(next(it for it in items if it["id"] == 12), "movie")[0]["content"]
    lines = text.splitlines()[1:]
    assert lines[:3] == ["Title: The Usual Suspects", "Year: 1995", "Genres: Crime, Thriller"], text
    assert lines[3].startswith("User Rating: ") and lines[4] == f"Number of Buyers: {len(stars[12])}", text


def test_ml100k_ids_resolve_and_shapes(ml100k):
    out, _, dd, catalog = ml100k
    ids = np.array(sorted(catalog_ids(out)))
    for s in dd:
        for col in ("groundtruth", "seen", "history"):
            assert np.isin(flat_ids(dd[s], col), ids).all(), (s, col)
        assert np.isin(np.array(dd[s]["target"]), ids).all()
        assert all(len(g) <= 10 for g in dd[s]["groundtruth"])
    sids = [x for s in dd for x in dd[s]["sample_id"]]
    assert len(set(sids)) == len(sids) and re.fullmatch(r"ml-100k/u\d+/t\d+", sids[0])
    sub = dd["validation"].select(range(0, len(dd["validation"]), 7))
    for rec in sub:
        assert len(rec["prompt"]) == 1 and rec["prompt"][0]["role"] == "user"
        content = rec["prompt"][0]["content"]
        assert content.startswith(RANK_GRPO_INSTRUCTION + "USER: I have watched these movies, oldest first: ")
        shown = [catalog.display(i) for i in rec["history"]]
        assert content.endswith("; ".join(shown) + ". Which movies should I watch next?")
        assert len(rec["history"]) == min(20, len(rec["seen"])) and rec["history"] == rec["seen"][-20:]
        lines = rec["completion"][0]["content"].split("\n")
        assert len(lines) == 20 and rec["completion"][0]["role"] == "assistant"
        matched = []
        for line in lines:
            m = LINE.match(line)
            assert m, line
            matched.append(catalog.match(m["title"], int(m["year"])))
        assert None not in matched and len(set(matched)) == 20
        assert matched[:len(rec["groundtruth"])] == rec["groundtruth"]  # the next items first, in order
        assert not set(matched) & set(rec["seen"])


def test_ml100k_determinism_and_subsample(ml100k, tmp_path):
    _, _, full, _ = ml100k
    a = movielens.build(None, tmp_path / "a", max_samples_per_split=150, seed=3, progress=False, quiet=True)
    b = movielens.build(None, tmp_path / "b", max_samples_per_split=150, seed=3, progress=False, quiet=True)
    assert {s: a["splits"][s]["samples"] for s in a["splits"]} == {"train": 150, "validation": 150, "test": 150}
    assert (tmp_path / "a" / "catalog.json").read_bytes() == (tmp_path / "b" / "catalog.json").read_bytes()
    assert {k: v for k, v in a.items() if k != "output_dir"} == {k: v for k, v in b.items() if k != "output_dir"}
    da, db = load_processed(tmp_path / "a")[0], load_processed(tmp_path / "b")[0]
    by_id = {r: i for i, r in enumerate(full["validation"]["sample_id"])}
    for s in da:
        assert da[s].to_list() == db[s].to_list()
        ids = da[s]["sample_id"]
        assert ids == sorted(ids, key=lambda x: tuple(int(p[1:]) for p in x.split("/")[1:]))  # original order
    # The subsample holds the same records as the full build.
    rec = da["validation"][0]
    assert full["validation"][by_id[rec["sample_id"]]] == rec


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _ratings(n_users=3, n_items=4):
    """(user, item, rating, ts): every user rates every item, items in order, so each user has n_items ratings."""
    return [(u, i, 4, 1000 * u + 10 * i) for u in range(1, n_users + 1) for i in range(1, n_items + 1)]


@pytest.mark.parametrize("layout", ["ml-100k", "ml-1m", "ml-latest"])
def test_movielens_official_layouts(tmp_path, layout):
    raw = tmp_path / "raw"
    titles = ["Usual Suspects, The (1995)", "Misérables, Les (1995)", "Heat (1995)", "City of Lost Children, "
              "The (Cité des enfants perdus, La) (1995)"]
    if layout == "ml-100k":
        _write(raw / "u.item", "".join(f"{i}|{t}|01-Jan-1995||http://x|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1\n"
                                       for i, t in enumerate(titles, 1)), "latin-1")
        _write(raw / "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in _ratings()))
    elif layout == "ml-1m":
        _write(raw / "movies.dat", "".join(f"{i}::{t}::Action|Crime\n" for i, t in enumerate(titles, 1)), "latin-1")
        _write(raw / "ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in _ratings()))
    else:
        _write(raw / "movies.csv", "movieId,title,genres\n" + "".join(
            f'{i},"{t}",Action|Crime\n' for i, t in enumerate(titles, 1)))
        _write(raw / "ratings.csv", "userId,movieId,rating,timestamp\n" + "".join(
            f"{u},{i},{r}.0,{t}\n" for u, i, r, t in _ratings()))
    assert detect_layout(raw) == layout
    summary = movielens.build(raw, tmp_path / "out", min_history=1, progress=False, quiet=True)
    assert summary["read"] == {"users": 3, "items": 4, "ratings": 12} and summary["layout"] == layout
    cat = json.loads((tmp_path / "out" / "catalog.json").read_text(encoding="utf-8"))
    assert [c["title"] for c in cat] == ["The Usual Suspects", "Les Misérables", "Heat",
                                         "The City of Lost Children (Cité des enfants perdus, La)"]
    assert all(c["year"] == 1995 for c in cat) and cat[0]["raw_title"] == titles[0]
    assert cat[0]["genres"] in (["Action", "Crime"], ["Action", "Western"])
    assert sum(v["samples"] for v in summary["splits"].values()) == 3 * 3


def test_movielens_bad_input(tmp_path):
    raw = tmp_path / "raw"
    _write(raw / "u.item", "1|Heat (1995)|01-Jan-1995||x|0\n")
    _write(raw / "u.data", "1\t1\t5\t100\n1\t1\t5\n")
    with pytest.raises(DataError, match=r"u\.data, line 2, field 'timestamp'"):
        movielens.build(raw, tmp_path / "out", progress=False, quiet=True)
    _write(raw / "u.data", "1\tone\t5\t100\n")
    with pytest.raises(DataError, match=r"u\.data, line 1, field 'item id'"):
        movielens.build(raw, tmp_path / "out", progress=False, quiet=True)
    with pytest.raises(DataError, match="no MovieLens files"):
        detect_layout(tmp_path)
    bad = tmp_path / "csv"
    _write(bad / "movies.csv", "movieId,title,genres\n1,Heat (1995),Action\n")
    (bad / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,1,5,100\n1,\xff,5,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 3.*UTF-8"):
        movielens.build(bad, tmp_path / "out", progress=False, quiet=True)


# ==============================================================================================================
# Reddit-v2
# ==============================================================================================================


@pytest.fixture(scope="module")
def reddit(tmp_path_factory):
    require(REDDIT_DIR / REDDIT_JSON)
    out = tmp_path_factory.mktemp("reddit") / "reddit_v2"
    summary = reddit_v2.build(REDDIT_DIR, out, progress=False, quiet=True)
    return out, summary


def test_reddit_build(reddit):
    out, summary = reddit
    source = {s["sample_id"]: s for s in
              json.loads((REDDIT_DIR / REDDIT_JSON).read_text(encoding="utf-8"))["samples"]}
    dd, catalog = load_processed(out)
    assert summary["read"]["samples"] == 100 and summary["skipped"] == {}
    assert sum(len(dd[s]) for s in dd) == 100 and len(catalog) == 7404
    assert summary["stats"]["groundtruth pairs read"] == 476
    assert summary["stats"]["groundtruth pairs not in the catalog (dropped from groundtruth)"] == 0
    assert summary["stats"]["seen titles read"] == 706
    assert summary["catalog_report"] == {"invalid_year_set_to_null": 1}  # ('The Wall', 201)
    assert summary["dropped_fields (not part of the format)"]["assigned_trait"] == 100
    assert summary["options"]["split_mode"] == "hash"
    assert sum(summary["splits"][s]["users"] for s in summary["splits"]) == 40  # 40 distinct requests
    split_of_prompt = {}
    ids = np.array(sorted(catalog_ids(out)))
    for s in dd:
        assert np.isin(flat_ids(dd[s], "groundtruth"), ids).all() and np.isin(flat_ids(dd[s], "seen"), ids).all()
        for rec in dd[s]:
            src = source[rec["sample_id"].split("/", 1)[1]]
            assert rec["prompt"] == src["prompt"] and rec["completion"] == src["completion"]
            assert rec["prompt"][0]["content"].startswith(RANK_GRPO_INSTRUCTION)
            assert rec["history"] == [] and rec["target"] is None and rec["timestamp"] is None
            assert [catalog.display(i) for i in rec["groundtruth"]] == \
                [catalog.display(catalog.match(t, int(y))) for t, y in src["groundtruth_with_release_year"]]
            assert split_of_prompt.setdefault(rec["prompt"][0]["content"], s) == s  # one request, one split
    rec = next(r for s in dd for r in dd[s] if r["sample_id"] == "reddit_v2/train_2")
    assert sorted(catalog.display(i) for i in rec["groundtruth"]) == \
        ["A Mighty Wind (2003)", "This Is Spinal Tap (1984)", "Waiting for Guffman (1996)"]
    assert catalog.ids_for_title("Best in Show") and set(catalog.ids_for_title("Best in Show")) <= set(rec["seen"])
    # load_processed with the original pickle catalog: the same items.
    assert len(load_processed(out, catalog_path=REDDIT_DIR / "gt_catalog.pkl")[1]) == 7404


def _reddit_sample(i, conv="USER: movies like Heat (1995)?", literal=False):
    s = {"sample_id": f"s{i}", "prompt": build_prompt(conv),
         "completion": format_completion(["Heat (1995)"]),
         "seen_titles": ["Heat"], "groundtruth_with_release_year": [["Alien", "1979"], ["Nope Nope", "2001"]],
         "num_groundtruth": 2, "assigned_trait": "x"}
    if literal:  # the HF-dataset storage form: Python-literal strings
        for k in ("prompt", "completion", "seen_titles", "groundtruth_with_release_year"):
            s[k] = repr(s[k])
    return s


@pytest.fixture()
def tiny_catalog(tmp_path):
    path = tmp_path / "cat.json"
    path.write_text(json.dumps([{"id": 0, "title": "Heat", "year": 1995}, {"id": 1, "title": "Alien", "year": 1979},
                                {"id": 2, "title": "Aliens", "year": 1986}]))
    return path


def test_reddit_literal_strings_hf_folders_and_name_split(tmp_path, tiny_catalog):
    convs = [f"USER: request {k}" for k in range(4)]
    train = datasets.Dataset.from_list([_reddit_sample(i, convs[i % 4], literal=True) for i in range(8)])
    test = datasets.Dataset.from_list([_reddit_sample(100 + i, "USER: other", literal=True) for i in range(2)])
    hf = tmp_path / "hf"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(hf))
    summary = reddit_v2.build(hf, tmp_path / "out", catalog_path=tiny_catalog, progress=False, quiet=True)
    assert summary["options"]["split_mode"] == "name"
    assert {s: v["samples"] for s, v in summary["splits"].items()} == {"train": 8, "validation": 0, "test": 2}
    assert summary["stats"]["groundtruth pairs not in the catalog (dropped from groundtruth)"] == 10
    dd, _ = load_processed(tmp_path / "out")
    rec = dd["train"][0]
    assert rec["prompt"] == build_prompt(convs[0]) and rec["groundtruth"] == [1] and rec["seen"] == [0]
    # Two JSON files named by split; a completion-less sample gets a groundtruth completion.
    raw = tmp_path / "json"
    no_completion = _reddit_sample(7)
    del no_completion["completion"]
    _write(raw / "x_train.json", json.dumps({"samples": [_reddit_sample(1), no_completion]}))
    _write(raw / "x_val.json", json.dumps({"samples": [_reddit_sample(2)]}))
    summary = reddit_v2.build(raw, tmp_path / "out2", catalog_path=tiny_catalog, progress=False, quiet=True)
    assert {s: v["samples"] for s, v in summary["splits"].items()} == {"train": 2, "validation": 1, "test": 0}
    assert summary["stats"]["samples without a source completion (written from groundtruth)"] == 1
    comp = {r["sample_id"]: r["completion"][0]["content"] for r in load_processed(tmp_path / "out2")[0]["train"]}
    # GT, then the most frequent train GT items not seen (only Alien is ever GT; Heat is seen): one line.
    assert comp["reddit_v2/s7"] == "Alien (1979)"


def test_reddit_single_file_hash_split_groups_requests(tmp_path, tiny_catalog):
    raw = tmp_path / "raw"
    samples = [_reddit_sample(i, f"USER: request number {i % 25}") for i in range(100)]
    samples.append({**_reddit_sample(999), "groundtruth_with_release_year": [["Unknown", "1900"]]})
    _write(raw / "only.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    summary = reddit_v2.build(raw, tmp_path / "out", catalog_path=tiny_catalog, progress=False, quiet=True)
    assert summary["skipped"] == {"no groundtruth pair resolves in the catalog": 1}
    dd, _ = load_processed(tmp_path / "out")
    where = {}
    for s in dd:
        for rec in dd[s]:
            assert where.setdefault(rec["prompt"][0]["content"], s) == s
    assert sum(len(dd[s]) for s in dd) == 100 and len(where) == 25 and len(dd) >= 2


def test_reddit_groundtruth_completion_counts_left_out_items(tmp_path):
    """A completion written from ground truth cannot hold a yearless item nor more than n_items lines: those stay in
    the ground truth and are counted (they used to be left out of the completion silently)."""
    catalog = _write(tmp_path / "cat.json", json.dumps([
        {"id": 0, "title": "Heat", "year": 1995}, {"id": 1, "title": "Alien", "year": 1979},
        {"id": 2, "title": "Aliens", "year": 1986}, {"id": 3, "title": "Nameless", "year": None}]))
    sample = {**_reddit_sample(1), "groundtruth_with_release_year": [["Alien", "1979"], ["Nameless", ""],
                                                                     ["Aliens", "1986"]]}
    _write(tmp_path / "raw" / "only.jsonl", json.dumps(sample) + "\n")
    summary = reddit_v2.build(tmp_path / "raw", tmp_path / "out", catalog_path=catalog, completion="groundtruth",
                              n_items=1, progress=False, quiet=True)
    assert summary["stats"][GT_UNDATED_NOT_WRITTEN] == 1 and summary["stats"][GT_BEYOND_N_ITEMS_NOT_WRITTEN] == 1
    dd, _ = load_processed(tmp_path / "out")
    rec = dd[next(iter(dd))][0]
    assert rec["groundtruth"] == [1, 3, 2] and rec["completion"][0]["content"] == "Alien (1979)"
    # the source completion is kept as given: nothing is written from ground truth, nothing counted
    summary = reddit_v2.build(tmp_path / "raw", tmp_path / "out2", catalog_path=catalog, n_items=1,
                              progress=False, quiet=True)
    assert GT_UNDATED_NOT_WRITTEN not in summary["stats"] and GT_BEYOND_N_ITEMS_NOT_WRITTEN not in summary["stats"]


def test_reddit_bad_input(tmp_path, tiny_catalog):
    raw = tmp_path / "raw"
    _write(raw / "a.jsonl", json.dumps(_reddit_sample(1)) + "\n{not json\n")
    with pytest.raises(DataError, match=r"a\.jsonl, line 2: malformed JSON"):
        reddit_v2.build(raw, tmp_path / "o", catalog_path=tiny_catalog, progress=False, quiet=True)
    bad = _reddit_sample(1)
    del bad["groundtruth_with_release_year"]
    _write(raw / "a.jsonl", json.dumps(_reddit_sample(0)) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"a\.jsonl, line 2, field 'groundtruth_with_release_year': missing"):
        reddit_v2.build(raw, tmp_path / "o", catalog_path=tiny_catalog, progress=False, quiet=True)
    (raw / "a.jsonl").unlink()
    evil = {**_reddit_sample(1), "prompt": "[__import__('os').system('echo pwned')]"}
    _write(raw / "b.json", json.dumps({"samples": [_reddit_sample(0), evil]}))
    with pytest.raises(DataError, match=r"b\.json, samples\[1\], field 'prompt': not a valid Python literal"):
        reddit_v2.build(raw, tmp_path / "o", catalog_path=tiny_catalog, progress=False, quiet=True)
    (raw / "b.json").write_bytes(b'{"samples": [\n\n {"prompt": "caf\xe9"}]}')
    with pytest.raises(DataError, match=r"b\.json, line 3: not valid UTF-8"):
        reddit_v2.build(raw, tmp_path / "o", catalog_path=tiny_catalog, progress=False, quiet=True)
    _write(raw / "b.json", json.dumps({"samples": [_reddit_sample(0)]}))
    empty = _write(tmp_path / "empty.json", "[]")
    with pytest.raises(DataError, match=r"empty\.json.*empty catalog"):
        reddit_v2.build(raw, tmp_path / "o", catalog_path=empty, progress=False, quiet=True)
    with pytest.raises(DataError, match=r"gt_catalog\.pkl.*not found"):
        reddit_v2.build(raw, tmp_path / "o", progress=False, quiet=True)


# ==============================================================================================================
# ReDial
# ==============================================================================================================


@pytest.fixture(scope="module")
def redial_build(tmp_path_factory):
    require(REDIAL_DIR / "test_data")
    out = tmp_path_factory.mktemp("redial") / "redial"
    summary = redial.build(REDIAL_DIR, out, progress=False, quiet=True)
    return out, summary


def test_redial_build(redial_build):
    out, summary = redial_build
    dd, catalog = load_processed(out)
    st, sk = summary["stats"], summary["skipped"]
    assert summary["read"] == {"conversations": 1342, "messages": 23952, "catalog items": 6924}
    assert st["mentions of ids not in the catalog"] == 0 and st["mentions with no title at all"] == 0
    n = sum(len(dd[s]) for s in dd)
    assert n == st["recommender turns mentioning a movie"] - sum(sk.values()) and n > 3000
    assert 0.75 < len(dd["train"]) / n < 0.85 and len(dd["validation"]) > 200 and len(dd["test"]) > 200
    ids = np.array(sorted(catalog_ids(out)))
    conv_split = {}
    for s in dd:
        assert np.isin(flat_ids(dd[s], "groundtruth"), ids).all() and np.isin(flat_ids(dd[s], "seen"), ids).all()
        for rec in dd[s]:
            assert not set(rec["groundtruth"]) & set(rec["seen"])  # GT never in seen
            assert len(set(rec["groundtruth"])) == len(rec["groundtruth"])
            content = rec["prompt"][0]["content"]
            assert content.startswith(RANK_GRPO_INSTRUCTION) and not re.search(r"@\d", content)
            turns = content[len(RANK_GRPO_INSTRUCTION):].split("\n")
            assert turns and all(t.startswith(("USER: ", "SYSTEM: ")) for t in turns)
            lines = rec["completion"][0]["content"].split("\n")
            assert len(lines) == 20 and all(LINE.match(x) for x in lines)
            written = [i for i in rec["groundtruth"] if catalog[i]["year"] is not None]
            assert lines[:len(written)] == [catalog.display(i) for i in written]
            assert rec["history"] == [] and rec["target"] is None and rec["timestamp"] is None
            conv = rec["sample_id"].split("/")[1]
            assert conv_split.setdefault(conv, s) == s  # conversation-level split
    assert len(conv_split) == sum(summary["splits"][s]["users"] for s in dd)


def test_redial_first_conversation_by_hand(redial_build):
    """Conversation 20001 (first line of test_data): turns, @id replacement, GT and seen, by hand."""
    out, _ = redial_build
    dd, catalog = load_processed(out)
    recs = sorted((r for s in dd for r in dd[s] if r["sample_id"].startswith("redial/c20001/")),
                  key=lambda r: int(r["sample_id"].rsplit("/m", 1)[1]))
    # Recommender turns with a new movie: 204172 (@151656), 204175 (@94688 new, @151656 repeated),
    # 204179 (@101794), 204181 (@91481), 204183+204184 merged ("you are welcome" / "and also @124771").
    assert [r["sample_id"].rsplit("/m", 1)[1] for r in recs] == ["204172", "204175", "204179", "204181", "204183"]
    first = recs[0]
    assert first["prompt"][0]["content"].endswith("Here is the conversation: USER: Hi I am looking for a movie "
                                                  "like Super Troopers (2001)")
    assert first["groundtruth"] == [151656] and first["seen"] == [111776]
    second = recs[1]
    assert second["groundtruth"] == [94688]
    assert second["seen"] == [111776, 151656, 192131, 134643]  # every movie mentioned before, in order
    assert second["prompt"][0]["content"].endswith(
        "SYSTEM: You should watch Police Academy (1984)\n"
        "USER: Is that a great one? I have never seen it. I have seen American Pie I mean American Pie (1999)")


def test_redial_merge_turns():
    msgs = [{"text": "hi", "senderWorkerId": 1, "messageId": 10}, {"text": " there\n", "senderWorkerId": 1},
            {"text": "yo", "senderWorkerId": 2, "messageId": 12}]
    turns = redial.merge_turns(msgs)
    assert [(t["sender"], t["text"], t["message_id"]) for t in turns] == [(1, "hi there", 10), (2, "yo", 12)]


def _conv(cid="1", **kw):
    conv = {"conversationId": cid, "initiatorWorkerId": 1, "respondentWorkerId": 2,
            "movieMentions": {"10": "Heat  (1995)", "11": "Alien (1979)"},
            "messages": [{"text": "I like @10", "senderWorkerId": 1, "messageId": 1},
                         {"text": "Try @11", "senderWorkerId": 2, "messageId": 2}]}
    conv.update(kw)
    return conv


def _redial_dir(tmp_path, catalog="movieId,movieName,nbMentions\n10,Heat  (1995),5\n11,Alien (1979),3\n"):
    raw = tmp_path / "rd"
    if raw.exists():
        for p in raw.iterdir():
            p.unlink()
    _write(raw / "movies_with_mentions.csv", catalog)
    return raw


def test_redial_bad_input(tmp_path):
    raw = _redial_dir(tmp_path)
    _write(raw / "test_data", json.dumps(_conv("1")) + "\n" + '{"conversationId": "2", "messages": [\n')
    with pytest.raises(DataError, match=r"test_data, line 2: malformed JSON"):
        redial.build(raw, tmp_path / "o", progress=False, quiet=True)
    no_messages = _conv("2")
    del no_messages["messages"]
    _write(raw / "test_data", json.dumps(_conv("1")) + "\n" + json.dumps(no_messages) + "\n")
    with pytest.raises(DataError, match=r"test_data, line 2, field 'messages': missing"):
        redial.build(raw, tmp_path / "o", progress=False, quiet=True)
    bad_msg = _conv("3", messages=[{"text": "hi", "messageId": 5}])
    _write(raw / "test_data", json.dumps(bad_msg) + "\n")
    with pytest.raises(DataError, match=r"test_data, line 1, field 'messages\[0\]\.senderWorkerId': missing"):
        redial.build(raw, tmp_path / "o", progress=False, quiet=True)
    (raw / "test_data").write_bytes(json.dumps(_conv("1")).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"test_data, line 2: not valid UTF-8"):
        redial.build(raw, tmp_path / "o", progress=False, quiet=True)
    _write(raw / "test_data", json.dumps(_conv("1")) + "\n" + json.dumps(_conv("1")) + "\n")
    with pytest.raises(DataError, match=r"test_data, line 2, field 'conversationId': duplicate"):
        redial.build(raw, tmp_path / "o", progress=False, quiet=True)
    raw = _redial_dir(tmp_path, catalog="movieId,movieName,nbMentions\n")
    _write(raw / "test_data", json.dumps(_conv("1")) + "\n")
    with pytest.raises(DataError, match=r"movies_with_mentions\.csv.*empty catalog"):
        redial.build(raw, tmp_path / "o", progress=False, quiet=True)


def test_redial_train_test_files_and_skips(tmp_path):
    raw = _redial_dir(tmp_path)
    repeat = _conv("900", messages=[{"text": "I like @10", "senderWorkerId": 1, "messageId": 1},
                                  {"text": "yes @10 is good", "senderWorkerId": 2, "messageId": 2},
                                  {"text": "and @11", "senderWorkerId": 2, "messageId": 3}])
    _write(raw / "train_data.jsonl", "".join(json.dumps(_conv(str(i))) + "\n" for i in range(40)) + json.dumps(repeat)
           + "\n")
    _write(raw / "test_data.jsonl", json.dumps(_conv("100")) + "\n")
    summary = redial.build(raw, tmp_path / "o", progress=False, quiet=True)
    assert summary["splits"]["test"]["samples"] == 1
    assert summary["splits"]["train"]["samples"] + summary["splits"]["validation"]["samples"] == 41
    assert 0 < summary["splits"]["validation"]["samples"] < 15
    dd, _ = load_processed(tmp_path / "o")
    rec = next(r for s in dd for r in dd[s] if r["sample_id"] == "redial/c900/m2")  # merged turn 2+3
    assert rec["groundtruth"] == [11] and rec["seen"] == [10]
    assert rec["completion"][0]["content"] == "Alien (1979)"  # popular padding excludes seen Heat; runs out
    assert rec["prompt"][0]["content"].endswith("conversation: USER: I like Heat (1995)")


def test_redial_completion_counts_groundtruth_it_cannot_write(tmp_path):
    raw = _redial_dir(tmp_path, catalog="movieId,movieName,nbMentions\n10,Heat  (1995),5\n11,Alien (1979),3\n"
                                        "12,Aliens (1986),2\n13,Nameless,1\n")
    conv = _conv("1", movieMentions={}, messages=[
        {"text": "I like @10", "senderWorkerId": 1, "messageId": 1},
        {"text": "Try @11 @13 or @12", "senderWorkerId": 2, "messageId": 2}])
    _write(raw / "test_data", json.dumps(conv) + "\n")
    summary = redial.build(raw, tmp_path / "o", n_items=1, progress=False, quiet=True)
    assert summary["stats"][GT_UNDATED_NOT_WRITTEN] == 1  # Nameless has no year
    assert summary["stats"][GT_BEYOND_N_ITEMS_NOT_WRITTEN] == 1  # Aliens: a second dated line, n_items=1
    dd, _ = load_processed(tmp_path / "o")
    rec = dd[next(iter(dd))][0]
    assert rec["groundtruth"] == [11, 13, 12] and rec["completion"][0]["content"] == "Alien (1979)"


# ==============================================================================================================
# CLIs
# ==============================================================================================================


@pytest.mark.parametrize("module", [movielens, reddit_v2, redial])
def test_cli_help(module, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m preprocess.{module.__name__.rsplit('.', 1)[1]}" in text and "--output_dir" in text


def test_cli_run_prints_summary(tmp_path):
    require(REDIAL_DIR / "test_data")
    proc = subprocess.run([sys.executable, "-m", "preprocess.redial", "--raw_dir", str(REDIAL_DIR), "--output_dir",
                           str(tmp_path / "out"), "--no_progress"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "validation" in proc.stdout and "skipped (reason: count)" in proc.stdout
    assert "recommender turn mentions only movies already mentioned earlier" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "preprocess.redial", "--raw_dir", str(tmp_path / "missing"),
                          "--output_dir", str(tmp_path / "o2")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "missing" in bad.stderr and "Traceback" not in bad.stderr
