"""Hostile inputs to the data builders (preprocess/): each is refused with one line naming the file, the line or
the option, and a non-zero exit, or gives the exact output a careful user expects (issue 20, items 6-9)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preprocess import amazon, movielens, reddit_v2, redial
from preprocess.contract import DataError, load_processed, save_processed
from tests.conftest import REPO

FIX_CSV = Path(__file__).resolve().parent / "fixtures" / "amazon_csv"
CSV_NAME = "Video_Games_5_2016-10-2018-11.csv"
NO_INDEX = "catalog items named only in the CSV files (no item index)"


def _csv_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(FIX_CSV, raw)
    return raw


def _csv_argv(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["--format", "csv", "--raw_dir", str(raw), "--category", "Video_Games", "--output_dir", str(out),
            "--no_progress", *extra]


def _refused(main, argv, capsys) -> str:
    """The one stderr line of a refused builder run (exit code 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if lines and lines[0].startswith("usage:"):  # argparse: the usage text, then the one error line
        assert ": error: " in lines[-1] and not any(": error: " in x for x in lines[:-1]), err
        return lines[-1]
    assert len(lines) == 1, err
    return lines[0]


def _edit_csv(path: Path, edit) -> None:
    rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    header = list(rows[0])
    rows = edit(rows)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def _split_records(out: Path) -> dict[str, list[dict]]:
    dd, _ = load_processed(out)
    return {s: list(dd[s]) for s in dd}


# ------------------------------------------------------------------------------------------ item 6: item index


def test_csv_item_index_found_where_the_bigrec_d3_layout_keeps_it(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    (raw / "index").mkdir()
    (raw / "Video_Games.item.json").rename(raw / "index" / "Video_Games.item.json")
    (raw / "index" / "Video_Games.index.json").write_text('{"0": ["<a_1>"]}')  # the layout's semantic-id file
    summary = amazon.main(_csv_argv(raw, tmp_path / "out"))
    assert "warning" not in capsys.readouterr().err
    assert summary["options"]["item_index"] == str(raw / "index" / "Video_Games.item.json")
    assert summary["catalog_items"] == 7  # the index's 7 items, also the one no CSV names
    assert NO_INDEX not in summary["stats"]


def test_csv_catalog_from_interactions_alone_is_warned_and_counted(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    (raw / "Video_Games.item.json").unlink()
    (raw / "index").mkdir()
    (raw / "index" / "Beauty.item.json").write_text('{"0": {"title": "Soap"}}')  # another category's index
    summary = amazon.main(_csv_argv(raw, tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: no item index found ({raw}/*.json or {raw}/index/Video_Games.item.json); the catalog "
                   "holds only the 6 items the CSV files name (items never interacted with are missing; pass "
                   "--item_index)"]
    assert summary["stats"][NO_INDEX] == 6 and summary["catalog_items"] == 6
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["stats"][NO_INDEX] == 6


# ------------------------------------------------------------------------------------------ item 7: file shapes


def test_csv_and_index_with_a_utf8_bom_build_exactly_like_without(tmp_path):
    raw = _csv_raw(tmp_path)
    plain = amazon.build_csv(raw, tmp_path / "plain", category="Video_Games", progress=False, quiet=True)
    for path in [*raw.glob("*/*.csv"), raw / "Video_Games.item.json"]:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    bom = amazon.build_csv(raw, tmp_path / "bom", category="Video_Games", progress=False, quiet=True)
    assert bom["splits"] == plain["splits"] and bom["catalog_items"] == 7
    assert _split_records(tmp_path / "bom") == _split_records(tmp_path / "plain")


def test_amazon_2023_and_atomic_files_with_a_bom_build_exactly_like_without(tmp_path):
    fix_2023 = FIX_CSV.parent / "amazon2023"
    atomic = tmp_path / "atomic"
    atomic.mkdir()
    items = "".join(f"{i}\tGame {i}\n" for i in range(5))
    (atomic / "Games.item").write_text("item_id:token\ttitle:token_seq\n" + items)
    (atomic / "Games.valid.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1 2\t3\n")
    (atomic / "Games.test.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1 2 3\t4\n")
    kw = {"category": "Video_Games", "source_kcore": 0, "min_items": 1, "progress": False, "quiet": True}
    for name, bom in (("plain", False), ("bom", True)):
        raw = tmp_path / f"2023_{name}"
        shutil.copytree(fix_2023, raw)
        if bom:
            for path in [*raw.glob("*.jsonl"), *atomic.glob("Games.*")]:
                path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        amazon.build_2023(raw, tmp_path / f"out_2023_{name}", **kw)
        amazon.build_atomic(atomic, tmp_path / f"out_atomic_{name}", category="Games", progress=False, quiet=True)
    for fmt in ("2023", "atomic"):
        plain = _split_records(tmp_path / f"out_{fmt}_plain")
        assert plain and _split_records(tmp_path / f"out_{fmt}_bom") == plain
    assert len(_split_records(tmp_path / "out_atomic_bom")["test"]) == 1


def test_csv_empty_file_says_the_file_is_empty(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    path = raw / "test" / CSV_NAME
    path.write_bytes(b"")
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out"), capsys)
    assert line == f"error: {path}: the file is empty (expected a CSV header line)"


def test_csv_header_only_test_file_is_refused_not_a_missing_split(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    path = raw / "test" / CSV_NAME
    path.write_text(path.read_text().splitlines()[0] + "\n")
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out"), capsys)
    assert line == f"error: {path}, line 1: no data rows (only a header)"
    assert not (tmp_path / "out").exists()


def test_csv_directory_where_a_csv_file_is_expected(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    path = raw / "valid" / CSV_NAME
    path.unlink()
    path.mkdir()
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out"), capsys)
    assert line == f"error: {path}: is a directory, expected a CSV file"


@pytest.mark.parametrize("where", ["item_index is a directory", "item_index is missing"])
def test_item_index_option_that_is_not_a_file(tmp_path, capsys, where):
    raw = _csv_raw(tmp_path)
    index = tmp_path / "index_dir"
    if where == "item_index is a directory":
        index.mkdir()
        expect = f"error: {index}: --item_index is a directory, expected a JSON file"
    else:
        expect = f"error: {index}: --item_index not found"
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out", "--item_index", str(index)), capsys)
    assert line == expect


@pytest.mark.parametrize("builder", ["amazon", "movielens", "redial", "reddit_v2"])
@pytest.mark.parametrize("shape", ["is a file", "under a file"])
def test_output_dir_that_is_or_is_under_a_file_is_refused_before_reading(tmp_path, capsys, builder, shape):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if shape == "is a file" else blocker / "sub" / "out"
    raw = tmp_path / "no_input_here"  # never read: the output is checked first
    main, argv = {
        "amazon": (amazon.main, _csv_argv(raw, out)),
        "movielens": (movielens.main, ["--raw_dir", str(raw), "--output_dir", str(out), "--no_progress"]),
        "redial": (redial.main, ["--raw_dir", str(raw), "--output_dir", str(out), "--no_progress"]),
        "reddit_v2": (reddit_v2.main, ["--raw_dir", str(raw), "--output_dir", str(out), "--no_progress"]),
    }[builder]
    line = _refused(main, argv, capsys)
    why = "is a file, not a folder" if shape == "is a file" else f"is under {blocker}, which is a file"
    assert line == f"error: {out}: --output_dir {why}"
    assert blocker.read_text() == "not a folder"


def test_save_processed_refuses_an_output_dir_that_is_a_file(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    rec = {"sample_id": "s0", "prompt": [{"role": "user", "content": "p"}],
           "completion": [{"role": "assistant", "content": "c"}], "groundtruth": [0], "seen": [], "history": [],
           "target": 0, "timestamp": None}
    with pytest.raises(DataError, match=r"taken: --output_dir is a file, not a folder$"):
        save_processed(blocker, {"train": [rec]}, [{"id": 0, "title": "A", "year": None}], {}, quiet=True)


def test_save_processed_refuses_a_data_set_without_any_sample(tmp_path):
    with pytest.raises(DataError, match=r"out: no sample in any split \(train, validation, test\); nothing written"):
        save_processed(tmp_path / "out", {"train": [], "validation": [], "test": []},
                       [{"id": 0, "title": "A", "year": None}], {}, quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("builder", [redial, reddit_v2])
def test_catalog_path_that_is_a_directory(tmp_path, capsys, builder):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "test_data.jsonl").write_text("{}\n")
    catalog = tmp_path / "catalog_dir"
    catalog.mkdir()
    line = _refused(builder.main, ["--raw_dir", str(raw), "--output_dir", str(tmp_path / "out"), "--catalog_path",
                                   str(catalog), "--no_progress"], capsys)
    assert line == f"error: {catalog}: --catalog_path is a directory, expected a catalog file"


# ------------------------------------------------------------------------------------------ item 8: numeric options


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_samples_per_split_below_one_is_refused_at_parse_time(tmp_path, capsys, value):
    line = _refused(movielens.main, ["--output_dir", str(tmp_path / "out"), "--max_samples_per_split", value,
                                     "--no_progress"], capsys)
    assert line == ("python -m preprocess.movielens: error: argument --max_samples_per_split: must be an integer "
                    f">= 1, got '{value}'")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=f"max_samples_per_split must be None or >= 1, got {value}"):
        movielens.build(None, tmp_path / "out", max_samples_per_split=int(value), progress=False, quiet=True)


@pytest.mark.parametrize("module, option, value, minimum", [
    (amazon, "--max_history", "0", 1),
    (amazon, "--max_users", "0", 1),
    (amazon, "--window_kcore", "-1", 0),
    (movielens, "--n_items", "0", 1),
    (movielens, "--min_history", "-1", 0),
    (redial, "--n_items", "0", 1),
    (reddit_v2, "--n_items", "-2", 1),
])
def test_builder_integer_options_are_range_checked_naming_the_option(tmp_path, capsys, module, option, value,
                                                                     minimum):
    argv = ["--raw_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), option, value]
    if module is amazon:
        argv = ["--format", "csv", "--category", "Video_Games", *argv]
    line = _refused(module.main, argv, capsys)
    assert line.endswith(f"error: argument {option}: must be an integer >= {minimum}, got '{value}'")


@pytest.mark.parametrize("module", [amazon, movielens, redial, reddit_v2])
def test_split_fractions_that_do_not_sum_to_one_are_refused_at_parse_time(tmp_path, capsys, module):
    argv = ["--raw_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--split_fractions", "0.5", "0.5",
            "0.5"]
    if module is amazon:
        argv = ["--format", "2023", "--category", "Video_Games", *argv]
    line = _refused(module.main, argv, capsys)
    assert line.endswith("error: argument --split_fractions: three numbers >= 0 summing to 1 with TRAIN > 0, "
                         "got 0.5 0.5 0.5")


@pytest.mark.parametrize("value", ["1", "-0.1"])
def test_redial_valid_fraction_outside_zero_to_one_is_refused(tmp_path, capsys, value):
    line = _refused(redial.main, ["--raw_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"),
                                  "--valid_fraction", value], capsys)
    assert line.endswith(f"error: argument --valid_fraction: must be in [0, 1), got {float(value):g}")


# ------------------------------------------------------------------------------------------ item 9: contents


def test_csv_train_and_test_that_are_the_same_file_are_refused(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    test = raw / "test" / CSV_NAME
    test.unlink()
    test.symlink_to(raw / "train" / CSV_NAME)
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out"), capsys)
    assert line == f"error: {test}: is the same file as the train file {raw / 'train' / CSV_NAME}"


def test_csv_train_and_test_with_the_same_content_are_refused(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    shutil.copyfile(raw / "train" / CSV_NAME, raw / "test" / CSV_NAME)
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out"), capsys)
    train, test = raw / "train" / CSV_NAME, raw / "test" / CSV_NAME
    assert line == f"error: {test}: has the same content as the train file {train}"


def test_csv_rows_shared_by_two_splits_are_refused_with_the_count(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    train_rows = list(csv.DictReader((raw / "train" / CSV_NAME).open(newline="")))
    _edit_csv(raw / "test" / CSV_NAME, lambda rows: [*rows, train_rows[3], train_rows[1]])  # test lines 4, 5
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out"), capsys)
    assert line == (f"error: {raw / 'test' / CSV_NAME}, line 4: the same sample (user, history, item, timestamp) as "
                    f"{raw / 'train' / CSV_NAME} line 5; 2 rows of the test file are also in the train file (the "
                    "splits must not overlap)")


@pytest.mark.parametrize("column, value, shown", [
    ("rating", "-3", "-3.0"),
    ("rating", "1e9", "1000000000.0"),
    ("history_rating", "[5.0, 1e9]", "1000000000.0"),
    ("history_rating", "[-3, 4.0]", "-3.0"),
])
def test_csv_ratings_outside_zero_to_five_are_refused_with_file_and_line(tmp_path, capsys, column, value, shown):
    raw = _csv_raw(tmp_path)
    path = raw / "train" / CSV_NAME

    def edit(rows):
        rows[1][column] = value  # line 3: its history has 2 items
        return rows
    _edit_csv(path, edit)
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out"), capsys)
    assert line == f"error: {path}, line 3, field {column!r}: a rating must be in [0, 5], got {shown}"


def test_csv_history_later_than_its_target_is_refused_with_file_and_line(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    path = raw / "valid" / CSV_NAME

    def edit(rows):
        rows[0]["history_timestamp"] = "[1500000000, 1500600000, 1500259200]"  # item 2 after the target 1500518400
        return rows
    _edit_csv(path, edit)
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out"), capsys)
    assert line == (f"error: {path}, line 2, field 'history_timestamp': history item 2 (time 1500600000) is later "
                    "than the target (time 1500518400); a time delta cannot be negative")


def test_item_index_with_a_duplicate_key_is_refused_naming_the_key(tmp_path, capsys):
    raw = _csv_raw(tmp_path)
    index = raw / "Video_Games.item.json"
    text = index.read_text()
    index.write_text(text.replace('"4": {', '"3": {"title": "Mario Kart 8 Deluxe"},\n "4": {'))
    line = _refused(amazon.main, _csv_argv(raw, tmp_path / "out"), capsys)
    assert line == f"error: {index}: duplicate key '3' (JSON keeps only the last one; remove the other)"


def _ml100k(raw: Path, u_data: str) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||x|0\n" for i in range(1, 5)))
    (raw / "u.data").write_text(u_data)
    return raw


@pytest.mark.parametrize("layout, rating, line", [("ml-100k", "-3", 2), ("ml-100k", "6", 2), ("ml-latest", "1e9", 3)])
def test_movielens_ratings_outside_zero_to_five_are_refused(tmp_path, layout, rating, line):
    raw = tmp_path / "raw"
    if layout == "ml-100k":
        _ml100k(raw, f"1\t1\t4\t100\n1\t2\t{rating}\t200\n")
        path, field = raw / "u.data", "rating"
    else:
        raw.mkdir()
        (raw / "movies.csv").write_text("movieId,title,genres\n1,Heat (1995),Action\n2,Alien (1979),Horror\n")
        (raw / "ratings.csv").write_text(f"userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,{rating},200\n")
        path, field = raw / "ratings.csv", "rating"
    with pytest.raises(DataError) as err:
        movielens.build(raw, tmp_path / "out", min_history=1, progress=False, quiet=True)
    assert str(err.value) == f"{path}, line {line}, field {field!r}: a rating must be in [0, 5], got {float(rating)}"


def test_movielens_csv_with_a_bom_builds_like_without(tmp_path):
    summaries = {}
    for name, bom in (("plain", b""), ("bom", b"\xef\xbb\xbf")):
        raw = tmp_path / name
        raw.mkdir()
        (raw / "movies.csv").write_bytes(bom + b"movieId,title,genres\n1,Heat (1995),Action\n2,Alien (1979),Horror\n")
        (raw / "ratings.csv").write_bytes(bom + b"userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,3.5,200\n")
        summaries[name] = movielens.build(raw, tmp_path / f"out_{name}", min_history=1, progress=False, quiet=True)
    assert summaries["bom"]["splits"] == summaries["plain"]["splits"]
    assert summaries["bom"]["read"] == {"users": 1, "items": 2, "ratings": 2}


def test_movielens_directory_where_a_file_is_expected(tmp_path, capsys):
    raw = _ml100k(tmp_path / "raw", "1\t1\t4\t100\n")
    (raw / "u.data").unlink()
    (raw / "u.data").mkdir()
    line = _refused(movielens.main, ["--raw_dir", str(raw), "--output_dir", str(tmp_path / "out"), "--no_progress"],
                    capsys)
    assert line == f"error: {raw / 'u.data'}: is a directory, expected a MovieLens file"


# ------------------------------------------------------------------------------------------ as a user runs it


def test_module_run_prints_one_line_and_exits_non_zero(tmp_path):
    raw = _csv_raw(tmp_path)
    path = raw / "train" / CSV_NAME

    def edit(rows):
        rows[0]["rating"] = "-3"
        return rows
    _edit_csv(path, edit)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "preprocess.amazon", *_csv_argv(raw, tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {path}, line 2, field 'rating': a rating must be in [0, 5], got -3.0\n"
