"""preprocess.amazon: the three Amazon formats to the data contract, with RecPO prompts."""
import csv
import gzip
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from preprocess import amazon
from preprocess.amazon.atomic import build_atomic
from preprocess.amazon.csv_files import build_csv
from preprocess.amazon.records import temporal_cuts
from preprocess.amazon.reviews_2023 import build_2023
from preprocess.contract import DataError, load_processed, save_processed
from preprocess.recpo_prompts import (
    category_name,
    format_time_delta,
    item_attributes,
    item_prompt,
    record_user_prompt,
    user_prompt,
)
from tests.conftest import AMAZON_DIR, require

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIX_2023 = FIXTURES / "amazon2023"
FIX_CSV = FIXTURES / "amazon_csv"
HEADER = ("Analyze in depth and finally recommend next video games I might purchase inside <answer> and </answer>.\n"
          "For example, <answer> a product </answer>.\n\n")
HEADER_LINES = 4  # the two sentences, a blank line, "Below is my historical ..."


def _secs(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


def _build(builder, raw, out, **kw):
    summary = builder(raw, out, progress=False, quiet=True, **kw)
    dd, catalog = load_processed(out)
    return summary, dd, catalog


def _records(dd):
    return {s: list(dd[s]) for s in dd}


def _check_contract(recs, catalog, max_history=20):
    """Every id in the catalog, history <= max_history, seen == history, groundtruth == [target], prompt rendered
    and equal to the trainer's re-rendering of the loaded record."""
    ids = set(catalog.ids)
    for split, rows in recs.items():
        for r in rows:
            assert r["target"] in ids and set(r["history"]) <= ids
            assert 1 <= len(r["history"]) <= max_history
            assert r["seen"] == r["history"] and r["groundtruth"] == [r["target"]]
            content = r["prompt"][-1]["content"]
            assert content.startswith(HEADER) and len(content.splitlines()) == HEADER_LINES + len(r["history"])
            for h, line in zip(r["history"], content.splitlines()[HEADER_LINES:]):
                assert f"[{catalog[h]['title']}]" in line
            assert r["prompt"] == record_user_prompt(r, catalog, "video games")
            assert r["completion"] == [{"role": "assistant", "content": catalog[r["target"]]["title"]}]


def _build_2023(tmp_path, raw=FIX_2023, **kw):
    kw = {"category": "Video_Games", "source_kcore": 0, "min_items": 1, **kw}
    return _build(build_2023, raw, tmp_path / "out", **kw)


# ---------------------------------------------------------------------------------------------------- prompts


def test_time_delta_and_prompt_wording():
    assert format_time_delta(59) == "1.0min"
    assert format_time_delta(5400) == "1h 30.0min"
    assert format_time_delta(2 * 86400 + 3 * 3600 + 1800) == "2d 3.5h"
    with pytest.raises(ValueError):
        format_time_delta(-1)
    assert user_prompt(["A", "B"], "video games", ratings=[5, 3.5], time_deltas=[7200, 3600]) == [
        {"role": "user", "content": HEADER + "Below is my historical video games purchases and ratings (out of 5):\n"
                                            "2h 0.0min ago: [A] (5.0)\n1h 0.0min ago: [B] (3.5)"}]
    # no time (atomic files): oldest first, no deltas; no ratings: no "(x)" and no rating header
    assert user_prompt(["A", "B"], "video games")[0]["content"] == (
        HEADER + "Below is my historical video games purchases, oldest first:\n[A]\n[B]")
    assert user_prompt(["A", "B", "C"], "video games", ratings=[1, 2, 3], max_history=2)[0]["content"].endswith(
        "oldest first:\n[B] (2.0)\n[C] (3.0)")
    with pytest.raises(ValueError, match="ratings has 1 values for 2"):
        user_prompt(["A", "B"], "video games", ratings=[5])
    item = {"id": 0, "title": "A", "year": None, "average_rating": 4.0, "rating_number": 12,
            "description": ["Line one.", "Line  two."]}
    assert item_prompt(item, "video games") == [{"role": "user", "content": (
        "Summarize key attributes of the following video games inside <answer> and </answer>:\n"
        "Title: A\nUser Rating: 4.0\nNumber of Buyers: 12\nDescription: Line one. Line two.")}]
    # an Amazon item without metadata: only its title (its `text` is never read as a description)
    bare = {"id": 1, "title": "B", "average_rating": None, "rating_number": None, "description": None,
            "text": "Title: B"}
    assert item_prompt(bare, "CDs and vinyl")[0]["content"].endswith("CDs and vinyl inside <answer> and "
                                                                     "</answer>:\nTitle: B")
    # a catalog without a description field (MovieLens): its text is the description
    assert item_attributes({"title": "C", "text": "Drama"}) == "Title: C\nDescription: Drama"
    assert [category_name(c) for c in ("Video_Games", "Games", "CDs_and_Vinyl", "Pet_Supplies")] == [
        "video games", "video games", "CDs and vinyl", "pet supplies"]


# ---------------------------------------------------------------------------------------------------- 2023


def test_2023_counts_and_every_skip_by_reason(tmp_path):
    summary, dd, catalog = _build_2023(tmp_path)
    assert {s: len(dd[s]) for s in dd} == {"train": 8, "validation": 1, "test": 1}
    assert [it["title"] for it in catalog.items] == [
        "Elden Ring - PlayStation 5", "The Legend of Zelda: Tears of the Kingdom", "Controller Charging Station",
        "Headset & Mic"]  # ids by sorted parent_asin A1 A2 A3 A6; HTML entity and whitespace cleaned
    assert all(it["year"] is None for it in catalog.items)
    assert summary["skipped"] == {
        "metadata: no numeric price (R²ec's preprocess drops these; --keep_items_without_price)": 1,
        "metadata: repeated parent_asin (first row kept)": 1,
        "metadata: title is HTML markup": 1,
        "metadata: title longer than 20 words": 1,
        "review: of an item left out of the metadata (reasons above)": 2,  # U2's A4, U4's A5
        "review: of an item missing from the metadata file": 1,  # U6's B_MISSING
        "review: outside the final time window": 3,  # U4's A8 and U5's A8 (before), U4's A1 (after the end)
        "review: repeated (user, item) pair (earliest kept)": 1,  # U3's second A3
        "user with <= min_history=1 interactions (no sample)": 1,  # U5
    }
    assert summary["stats"]["interactions"] == 16 and summary["stats"]["users"] == 6
    assert summary["recpo"] == {"category": "video games"}
    _check_contract(_records(dd), catalog)


def test_2023_prompt_rendered_with_time_deltas_and_ratings(tmp_path):
    _, dd, catalog = _build_2023(tmp_path)
    rec = next(r for r in dd["train"] if r["sample_id"] == "amazon23-Video_Games/uU1/t3")
    assert rec["prompt"] == [{"role": "user", "content": (
        HEADER + "Below is my historical video games purchases and ratings (out of 5):\n"
        "120d 0.0h ago: [Elden Ring - PlayStation 5] (5.0)\n"
        "90d 0.0h ago: [The Legend of Zelda: Tears of the Kingdom] (4.0)\n"
        "54d 21.5h ago: [Controller Charging Station] (3.0)")}]
    assert rec["completion"][0]["content"] == "Headset & Mic"
    assert rec["timestamp"] == _secs("2023-03-01T10:00:00")
    assert rec["history_ratings"] == [5.0, 4.0, 3.0]
    assert rec["history_time_deltas"] == [120 * 86400, 90 * 86400, 54 * 86400 + 21.5 * 3600]
    assert catalog[0]["text"] == ("Title: Elden Ring - PlayStation 5\nUser Rating: 4.8\nNumber of Buyers: 1200\n"
                                  "Description: An action role-playing game. Open world & bosses.")


def test_2023_no_time_leakage_and_split_by_target_time(tmp_path):
    summary, dd, _ = _build_2023(tmp_path)
    recs = _records(dd)
    train_end = max(r["timestamp"] for r in recs["train"])
    assert train_end < min(r["timestamp"] for r in recs["validation"])
    assert max(r["timestamp"] for r in recs["validation"]) < min(r["timestamp"] for r in recs["test"])
    assert train_end == summary["split_cuts"]["train_end"] == _secs("2023-09-15T09:00:00")
    assert recs["test"][0]["sample_id"] == "amazon23-Video_Games/uU6/t2"


def test_2023_gzip_equals_plain_and_ties_at_the_cut_stay_together(tmp_path):
    raw = tmp_path / "gz"
    raw.mkdir()
    for name in ("Video_Games.jsonl", "meta_Video_Games.jsonl"):
        (raw / f"{name}.gz").write_bytes(gzip.compress((FIX_2023 / name).read_bytes()))
    _, plain, _ = _build_2023(tmp_path)
    _, zipped, _ = _build(build_2023, raw, tmp_path / "gz_out", category="Video_Games", source_kcore=0, min_items=1)
    assert _records(plain) == _records(zipped)

    # Ties at a cut go to the earlier split (the released code cuts by index and could split them).
    t1, t2 = temporal_cuts([1, 2, 2, 2, 3], (0.2, 0.2, 0.6))
    assert (t1, t2) == (1, 2)


def test_2023_window_moves_back_three_months_while_too_few_items(tmp_path):
    summary, dd, catalog = _build_2023(tmp_path, min_items=5)
    assert [w["start"] for w in summary["windows_tried"]] == ["2022-10-01", "2022-07-01"]
    assert [w["items"] for w in summary["windows_tried"]] == [4, 5]
    mario = next(it for it in catalog.items if it["title"] == "Mario Kart 8 Deluxe")
    description = mario["text"].split("Description: ", 1)[1]
    assert description.endswith("...") and len(description[:-3].split()) == 100  # cut to 100 words
    assert summary["skipped"]["review: outside the final time window"] == 2  # U4's A1 after the end, U5's A8
    # Never moves past the earliest review's year (2021, U5's A8): a huge min_items stops at 2021-10.
    summary, _, _ = _build_2023(tmp_path, min_items=10_000)
    assert [w["start"] for w in summary["windows_tried"]] == ["2022-10-01", "2022-07-01", "2022-04-01",
                                                               "2022-01-01", "2021-10-01"]


def test_2023_kcore_of_the_whole_file(tmp_path):
    summary, dd, _ = _build_2023(tmp_path, source_kcore=3)
    # 3-core: items with < 3 reviews (A4, A5, B_MISSING: 1 each; A8: 2) go, then U5 has 1 review left (A1) and
    # goes; the rest is stable: 6 reviews in all.
    assert summary["skipped"]["review: removed by the 3-core filter of the whole review file"] == 6
    assert summary["skipped"]["review: outside the final time window"] == 1
    assert "review: of an item left out of the metadata (reasons above)" not in summary["skipped"]
    assert summary["stats"]["users"] == 5
    assert {s: len(dd[s]) for s in dd} == {"train": 8, "validation": 1, "test": 1}


def _write_jsonl(path: Path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_2023_history_capped_at_20_most_recent(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write_jsonl(raw / "meta_Toys.jsonl", [{"parent_asin": f"I{i:02d}", "title": f"Toy {i}", "price": 1.0,
                                            "average_rating": 4.0, "rating_number": 1, "description": []}
                                           for i in range(25)])
    base = _secs("2023-01-01T00:00:00") * 1000
    _write_jsonl(raw / "Toys.jsonl", [{"user_id": "U", "parent_asin": f"I{i:02d}", "rating": 4.0,
                                       "timestamp": base + i * 3_600_000} for i in range(25)])
    _, dd, catalog = _build(build_2023, raw, tmp_path / "out", category="Toys", source_kcore=0, min_items=1)
    recs = [r for s in dd for r in dd[s]]
    assert len(recs) == 24
    last = next(r for r in recs if r["sample_id"].endswith("/t24"))
    assert last["history"] == list(range(4, 24)) and last["target"] == 24  # ids by sorted asin == i
    assert all(len(r["history"]) == min(20, int(r["sample_id"].rsplit("t", 1)[1])) for r in recs)
    assert "next toys I might purchase" in last["prompt"][0]["content"]


@pytest.mark.parametrize("file, line, reason, field", [
    ("Video_Games.jsonl", '{"user_id": "U1", "parent_asin": "A1", "rating": 5.0, "timestamp": 1', "malformed JSON",
     None),
    ("Video_Games.jsonl", {"parent_asin": "A1", "rating": 5.0, "timestamp": 1672531200000}, "missing", "user_id"),
    ("Video_Games.jsonl", {"user_id": "U1", "parent_asin": "A1", "rating": "five", "timestamp": 1672531200000},
     "must be a number", "rating"),
    ("Video_Games.jsonl", {"user_id": "U1", "parent_asin": "A1", "rating": 4.0, "timestamp": "soon"},
     "must be a number", "timestamp"),
    ("meta_Video_Games.jsonl", {"parent_asin": "Z9", "title": "X", "price": 1.0, "description": 5},
     "list of strings", "description"),
    ("meta_Video_Games.jsonl", {"parent_asin": 17, "title": "X"}, "must be a string", "parent_asin"),
    ("meta_Video_Games.jsonl", "[1, 2]", "expected a JSON object", None),
])
def test_2023_bad_input_names_file_line_and_field(tmp_path, file, line, reason, field):
    raw = tmp_path / "raw"
    shutil.copytree(FIX_2023, raw)
    lines = (raw / file).read_text().splitlines()
    lines.insert(2, line if isinstance(line, str) else json.dumps(line))  # becomes line 3
    (raw / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        _build_2023(tmp_path, raw=raw)
    msg = str(err.value)
    assert str(raw / file) in msg and "line 3" in msg and reason in msg
    if field:
        assert f"field {field!r}" in msg


def test_2023_missing_files_say_what_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"meta_Video_Games\.jsonl"):
        build_2023(tmp_path, tmp_path / "out", category="Video_Games")


# ---------------------------------------------------------------------------------------------------- atomic


def _write_atomic(raw: Path, items, valid, test):
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "Games.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"{i}\t{t}\n" for i, t in items))
    for name, rows in (("valid", valid), ("test", test)):
        (raw / f"Games-6k.{name}.inter").write_text(
            "user_id:token\titem_id_list:token_seq\titem_id:token\n"
            + "".join(f"{u}\t{' '.join(map(str, h))}\t{t}\n" for u, h, t in rows))


def test_atomic_small_leave_one_out_and_bad_input(tmp_path):
    items = [(i, f"Game {i} &amp; more") for i in range(6)]
    _write_atomic(tmp_path / "ok", items, [("0", [0, 1, 2], 3), ("1", [4], 5)], [("0", [0, 1, 2, 3], 4),
                                                                                 ("1", [4, 5], 0)])
    summary, dd, catalog = _build(build_atomic, tmp_path / "ok", tmp_path / "out", category="Games")
    recs = _records(dd)
    assert [r["target"] for r in recs["train"]] == [1, 2]  # user 0's prefixes inside h; user 1 has h of one item
    assert [(r["history"], r["target"]) for r in recs["validation"]] == [([0, 1, 2], 3), ([4], 5)]
    assert [(r["history"], r["target"]) for r in recs["test"]] == [([0, 1, 2, 3], 4), ([4, 5], 0)]
    assert catalog[0]["title"] == "Game 0 & more" and len(catalog) == 6
    assert all(r["timestamp"] is None for s in recs.values() for r in s)
    _check_contract(recs, catalog)

    cases = [
        ([("0", [0, 1], 2)], [("0", [0, 2], 3)], "Games-6k.test.inter", "line 2", "validation history followed"),
        ([("0", [0, "x"], 2)], [("0", [0, 1, 2], 3)], "Games-6k.valid.inter", "line 2", "non-negative integer"),
        ([("0", [0, 9], 2)], [("0", [0, 9, 2], 3)], "Games-6k.valid.inter", "line 2", "not in the item file"),
    ]
    for k, (valid, test, file, where, reason) in enumerate(cases):
        raw = tmp_path / f"bad{k}"
        _write_atomic(raw, items, valid, test)
        with pytest.raises(DataError) as err:
            build_atomic(raw, tmp_path / "bad_out", category="Games", progress=False, quiet=True)
        assert str(raw / file) in str(err.value) and where in str(err.value) and reason in str(err.value)
    raw = tmp_path / "bad_header"
    _write_atomic(raw, items, [("0", [0], 1)], [("0", [0, 1], 2)])
    (raw / "Games.item").write_text("item_id:token\tname:token_seq\n0\tA\n")
    with pytest.raises(DataError, match=r"Games\.item, line 1, field 'title'"):
        build_atomic(raw, tmp_path / "bad_out", category="Games", progress=False, quiet=True)


def _read_real_inter(path: Path) -> dict[str, tuple[list[int], int]]:
    out = {}
    for line in path.read_text().splitlines()[1:]:
        user, history, target = line.split("\t")
        out[user] = ([int(x) for x in history.split()], int(target))
    return out


def test_atomic_real_amazon18_games(tmp_path):
    raw = require(AMAZON_DIR)
    summary, dd, catalog = _build(build_atomic, raw, tmp_path / "out", category="Games", max_users=300, seed=1)
    valid = _read_real_inter(raw / "Games-6k.valid.inter")
    test = _read_real_inter(raw / "Games-6k.test.inter")
    recs = _records(dd)
    users = {r["sample_id"].split("/")[1][1:] for r in recs["test"]}
    assert len(users) == 300 and len(catalog) == 16_859
    assert summary["skipped"] == {"user not in the --max_users=300 sample (seed 1)": 50_546 - 300}
    # train = every prefix inside the validation history (targets h[1:]), independently counted from the raw file
    assert len(recs["train"]) == sum(len(valid[u][0]) - 1 for u in users)
    assert len(recs["validation"]) == len(recs["test"]) == 300
    by_user = {}
    for split, rows in recs.items():
        for r in rows:
            _, user, t = r["sample_id"].split("/")
            by_user.setdefault(user[1:], []).append((split, int(t[1:]), r))
    for user, rows in by_user.items():
        (h, v), (ht, t) = valid[user], test[user]
        positions = {s: [p for s2, p, _ in rows if s2 == s] for s in ("train", "validation", "test")}
        assert positions["validation"] == [len(h)] and positions["test"] == [len(h) + 1]
        assert max(positions["train"], default=-1) < len(h)  # no train target at or after the validation step
        for split, _, r in rows:
            if split == "train":
                assert v not in r["history"] + [r["target"]] and t not in r["history"] + [r["target"]]
            if split == "validation":
                assert (r["history"], r["target"]) == (h[-20:], v)
            if split == "test":
                assert (r["history"], r["target"]) == (ht[-20:], t)
    _check_contract(recs, catalog)
    assert all("ago:" not in r["prompt"][0]["content"] for r in recs["test"])
    assert summary["recpo"]["category"] == "video games"


# ---------------------------------------------------------------------------------------------------- csv


def test_csv_counts_catalog_prompts_and_no_leakage(tmp_path):
    summary, dd, catalog = _build(build_csv, FIX_CSV, tmp_path / "out", category="Video_Games")
    recs = _records(dd)
    assert {s: len(v) for s, v in recs.items()} == {"train": 4, "validation": 2, "test": 2}
    assert len(catalog) == 7  # every item of the index, also the one never bought
    assert catalog[2]["text"] == "Title: Zelda: Breath of the Wild\nDescription: Open-world adventure & exploration."
    assert catalog[1]["text"] == "Title: Nintendo Switch Pro Controller"
    train_end = max(r["timestamp"] for r in recs["train"])
    assert all(r["timestamp"] > train_end for s in ("validation", "test") for r in recs[s])
    assert summary["stats"]["test targets earlier than the last train target (the files' own split)"] == 0
    rec = recs["test"][1]
    assert rec["sample_id"] == "csv-Video_Games/test/line3" and (rec["history"], rec["target"]) == ([1, 0], 5)
    assert rec["prompt"][0]["content"] == (
        HEADER + "Below is my historical video games purchases and ratings (out of 5):\n"
        "7d 0.0h ago: [Nintendo Switch Pro Controller] (2.0)\n4d 0.0h ago: [Super Mario Odyssey] (5.0)")
    _check_contract(recs, catalog)


def _csv_with(tmp_path, column: str, value: str, row: int = 1):
    raw = tmp_path / "raw"
    shutil.copytree(FIX_CSV, raw)
    path = raw / "train" / "Video_Games_5_2016-10-2018-11.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    rows[row][column] = value
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return raw, path


@pytest.mark.parametrize("column, value, reason, line", [
    ("history_item_id", "[0, 1", "not a Python list literal", 3),
    ("history_item_id", "__import__('os').getcwd()", "not a Python list literal", 3),  # parsed, never evaluated
    ("history_item_id", "{'a': 1}", "must be a list literal", 3),
    ("history_item_id", "[0, 'one']", "ids must be integers", 3),
    ("history_item_title", "['Super Mario Odyssey']", "1 titles for 2", 3),
    ("history_timestamp", "[1500000000]", "1 values for 2", 3),
    ("item_title", "A Different Title", "but 'A Different Title' in train/", 4),  # id 2 again on line 4
    ("item_id", "", "missing value", 3),
])
def test_csv_bad_input_names_file_line_and_field(tmp_path, column, value, reason, line):
    raw, path = _csv_with(tmp_path, column, value)
    with pytest.raises(DataError) as err:
        build_csv(raw, tmp_path / "out", category="Video_Games", progress=False, quiet=True)
    msg = str(err.value)
    assert str(path) in msg and f"line {line}," in msg and reason in msg
    named = "history_item_title" if line == 4 else column  # the title conflict is found where id 2 reappears
    assert f"field {named!r}" in msg


def test_csv_index_disagreement_and_layout_errors(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(FIX_CSV, raw)
    index = json.loads((raw / "Video_Games.item.json").read_text())
    del index["5"]
    (raw / "Video_Games.item.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"Video_Games\.item\.json, id 5: id used in test/.* not in the item index"):
        build_csv(raw, tmp_path / "out", category="Video_Games", progress=False, quiet=True)
    # without an index the catalog comes from the CSV titles
    (raw / "Video_Games.item.json").unlink()
    _, _, catalog = _build(build_csv, raw, tmp_path / "out", category="Video_Games")
    assert len(catalog) == 6 and catalog[5]["title"] == "Switch Carrying Case"
    (raw / "Video_Games.item.json").write_text("{not json")
    with pytest.raises(DataError, match=r"Video_Games\.item\.json, line 1: malformed JSON"):
        build_csv(raw, tmp_path / "out", category="Video_Games", progress=False, quiet=True)
    shutil.rmtree(raw / "test")
    with pytest.raises(DataError, match="expected train / valid / test CSV"):
        build_csv(raw, tmp_path / "out", category="Video_Games", progress=False, quiet=True)


# ---------------------------------------------------------------------------------------------------- one renderer


def _atomic_fixture(tmp_path):
    raw = tmp_path / "atomic"
    _write_atomic(raw, [(i, f"Game {i}") for i in range(5)], [("0", [0, 1, 2], 3)], [("0", [0, 1, 2, 3], 4)])
    return raw


@pytest.mark.parametrize("fmt", ["2023", "atomic", "csv"])
def test_stored_prompt_is_the_trainers_rendering_and_item_prompts_show_metadata(tmp_path, fmt):
    if fmt == "2023":
        summary, dd, catalog = _build_2023(tmp_path)
    elif fmt == "atomic":
        summary, dd, catalog = _build(build_atomic, _atomic_fixture(tmp_path), tmp_path / "out", category="Games")
    else:
        summary, dd, catalog = _build(build_csv, FIX_CSV, tmp_path / "out", category="Video_Games")
    category = summary["recpo"]["category"]
    assert category == "video games"
    rows = [r for s in dd for r in dd[s]]
    for r in rows:  # what the RecPO trainer trains on == what the data set stores (after the arrow round trip)
        assert r["prompt"] == record_user_prompt(r, catalog, category)
    with_time = [r["history_time_deltas"] is not None for r in rows]
    with_ratings = [r["history_ratings"] is not None for r in rows]
    assert all(with_time) == all(with_ratings) == (fmt != "atomic") and any(with_time) == (fmt != "atomic")
    # the annotations are shown from the record: dropping them changes the prompt to the plain form
    if fmt != "atomic":
        plain = {**rows[0], "history_ratings": None, "history_time_deltas": None}
        text = record_user_prompt(plain, catalog, category)[0]["content"]
        assert "ago:" not in text and "oldest first" in text and text != rows[0]["prompt"][0]["content"]

    prompts = {it["id"]: item_prompt(it, category)[0]["content"] for it in catalog.items}
    for it in catalog.items:
        assert prompts[it["id"]] == ("Summarize key attributes of the following video games inside <answer> and "
                                     f"</answer>:\n{it['text']}")
    if fmt == "2023":
        assert prompts[0].endswith("Title: Elden Ring - PlayStation 5\nUser Rating: 4.8\nNumber of Buyers: 1200\n"
                                   "Description: An action role-playing game. Open world & bosses.")
        assert (catalog[0]["average_rating"], catalog[0]["rating_number"]) == (4.8, 1200)
    elif fmt == "csv":  # the item index has descriptions, no ratings
        assert prompts[2].endswith(":\nTitle: Zelda: Breath of the Wild\n"
                                   "Description: Open-world adventure & exploration.")
    else:
        assert prompts[0].endswith(":\nTitle: Game 0")


def _record(**extra):
    return {"sample_id": "s0", "prompt": [{"role": "user", "content": "p"}],
            "completion": [{"role": "assistant", "content": "c"}], "groundtruth": [1], "seen": [0], "history": [0],
            "target": 1, "timestamp": None, **extra}


@pytest.mark.parametrize("extra, reason, field", [
    ({"history_ratings": [4.0, 5.0]}, "has 2 values for 1 history items", "history_ratings"),
    ({"history_ratings": ["4"]}, "list of finite numbers", "history_ratings"),
    ({"history_ratings": [float("nan")]}, "list of finite numbers", "history_ratings"),
    ({"history_time_deltas": [-5.0]}, "later than the target", "history_time_deltas"),
    ({"history_time_deltas": 3.0}, "list of finite numbers", "history_time_deltas"),
    ({"history_views": [1]}, "not part of the record contract", "history_views"),
])
def test_optional_history_fields_are_validated(tmp_path, extra, reason, field):
    items = [{"id": 0, "title": "A", "year": None}, {"id": 1, "title": "B", "year": None}]
    with pytest.raises(DataError) as err:
        save_processed(tmp_path / "out", {"train": [_record(**extra)]}, items, {}, quiet=True, progress=False)
    assert reason in str(err.value) and f"field {field!r}" in str(err.value)


def test_optional_history_fields_round_trip_and_are_null_where_absent(tmp_path):
    items = [{"id": 0, "title": "A", "year": None}, {"id": 1, "title": "B", "year": None}]
    splits = {"train": [_record(history_ratings=[4.5], history_time_deltas=[60])],
              "test": [_record(sample_id="s1")]}  # no optional fields here: null columns in its split
    save_processed(tmp_path / "out", splits, items, {}, quiet=True, progress=False)
    dd, _ = load_processed(tmp_path / "out")
    assert (dd["train"][0]["history_ratings"], dd["train"][0]["history_time_deltas"]) == ([4.5], [60.0])
    assert (dd["test"][0]["history_ratings"], dd["test"][0]["history_time_deltas"]) == (None, None)
    save_processed(tmp_path / "plain", {"train": [_record()]}, items, {}, quiet=True, progress=False)
    assert "history_ratings" not in load_processed(tmp_path / "plain")[0]["train"].column_names


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_help_build_and_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        amazon.main(["--help"])
    assert exit_.value.code == 0 and "--format" in capsys.readouterr().out
    summary = amazon.main(["--format", "csv", "--raw_dir", str(FIX_CSV), "--category", "Video_Games",
                           "--output_dir", str(tmp_path / "out"), "--no_progress"])
    printed = capsys.readouterr().out
    assert "train" in printed and "skipped (reason: count): none" in printed
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["splits"] == summary["splits"]
    with pytest.raises(SystemExit) as exit_:
        amazon.main(["--format", "2023", "--raw_dir", str(tmp_path), "--category", "Video_Games",
                     "--output_dir", str(tmp_path / "o2"), "--no_progress"])
    assert exit_.value.code == 2 and "meta_Video_Games.jsonl" in capsys.readouterr().err
