"""Format ``csv`` of ``preprocess.amazon``: the per-category CSV layout of BIGRec / D3-style repositories: ``train`` /
``valid`` / ``test`` CSV files (the split from the file or folder name, e.g.
``train/Video_Games_5_2016-10-2018-11.csv`` or ``valid.csv``; with several CSV files per split, the one whose name
contains ``--category``), columns ``user_id, history_item_title, item_title, history_item_id, item_id`` (history
columns are Python list literals, read with ``ast.literal_eval``) and, when present, ``history_rating, rating,
history_timestamp, timestamp`` (seconds or milliseconds; ratings in [0, 5]; no history time after the target's).
Item metadata: ``--item_index`` (default: the one ``*.json`` file in ``--raw_dir``, else
``--raw_dir/index/<Category>.item.json``, where the BIGRec / D3 layout keeps it), either ``{"<id>": {"title": ...,
"description": ...}}`` or a list of ``{"id"|"item_id", "title", "description"}``; without one the catalog is built
from the CSV titles alone, with a warning and the count in ``summary.json``. Splits are used as given: split files
that are the same file, have the same content or share a sample (user, history, item, timestamp) are refused, and
the summary counts validation/test targets earlier than the last train target (the files' own leakage, if any).
"""
from __future__ import annotations

import ast
import csv
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from tqdm import tqdm

from preprocess.amazon.records import (
    Interaction,
    _as_number,
    _check_options,
    _open_text,
    _rating,
    _summary,
    catalog_item,
    clean_text,
    iter_csv,
    keep_users_sample,
    make_record,
    train_popularity,
)
from preprocess.common import SkipCounter, json_loads_unique, read_text_utf8, require_file, split_from_name
from preprocess.contract import SPLITS, DataError, save_processed
from preprocess.recpo_prompts import category_name

# --------------------------------------------------------------------------------------------------------------
# Format csv: BIGRec / D3-style per-category CSV files + item index JSON
# --------------------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("user_id", "history_item_title", "item_title", "history_item_id", "item_id")
CSV_NO_INDEX = "catalog items named only in the CSV files (no item index)"
MS_THRESHOLD = 10**11  # a unix time above this (year 5138 in seconds) is in milliseconds


def find_csv_files(raw: Path, category: str) -> dict[str, Path]:
    """``{split: csv file}`` from the file or parent-folder names under ``raw`` (two levels)."""
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw_dir {raw} is not a directory")
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted([*raw.glob("*.csv"), *raw.glob("*/*.csv")]):
        split = split_from_name(path.stem) or split_from_name(path.parent.name if path.parent != raw else "")
        if split is not None:
            found[split].append(require_file(path, "a CSV file"))
    out = {}
    for split, paths in found.items():
        if len(paths) > 1:
            paths = [p for p in paths if category.lower() in p.name.lower()] or paths
        if len(paths) > 1:
            raise DataError(raw, reason=f"several {split} CSV files {[str(p.relative_to(raw)) for p in paths]}; "
                                        "keep one per split or name the category with --category")
        out[split] = paths[0]
    if "train" not in out or "test" not in out:
        raise DataError(raw, reason=f"expected train / valid / test CSV files (names or folders say the split); "
                                    f"found {sorted(out)}")
    named = [s for s in SPLITS if s in out]
    for k, later in enumerate(named):  # a copied or linked file would put every sample in two splits
        for earlier in named[:k]:
            a, b = out[earlier], out[later]
            if a.samefile(b):
                raise DataError(b, reason=f"is the same file as the {earlier} file {a}")
            if a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes():
                raise DataError(b, reason=f"has the same content as the {earlier} file {a}")
    return out


def _literal_list(text: str, path: Path, line: int, field: str) -> list:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise DataError(path, line=line, field=field,
                        reason=f"not a Python list literal ({type(err).__name__}): {text!r:.80}") from None
    if not isinstance(value, (list, tuple)):
        raise DataError(path, line=line, field=field, reason=f"must be a list literal, got {type(value).__name__}")
    return list(value)


def _list_ids(values: list, path: Path, line: int, field: str) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(path, line=line, field=field, reason=f"ids must be integers, got {v!r:.60}")
        out.append(v)
    return out


def _seconds(value: float) -> int:
    return int(value // 1000) if value > MS_THRESHOLD else int(value)


def read_item_index(path: Path, option: str | None = None) -> dict[int, dict]:
    """``{id: {"title", "description"}}`` from ``{"<id>": {...}}`` / ``{"<id>": "title"}`` or a list of items; a
    repeated key is refused (JSON would keep the last entry silently)."""
    try:
        data = json_loads_unique(read_text_utf8(require_file(path, "a JSON file", option)), path)
    except json.JSONDecodeError as err:
        raise DataError(path, line=err.lineno, reason=f"malformed JSON ({err.msg}, column {err.colno})") from None
    if isinstance(data, dict):
        entries = [(k, v if isinstance(v, dict) else {"title": v}, f"key {k!r}") for k, v in data.items()]
    elif isinstance(data, list):
        entries = []
        for i, v in enumerate(data):
            if not isinstance(v, dict):
                raise DataError(path, record=f"item {i}", reason=f"must be an object, got {type(v).__name__}")
            entries.append((v.get("id", v.get("item_id")), v, f"item {i}"))
    else:
        raise DataError(path, reason=f"expected a JSON object or list, got {type(data).__name__}")
    out: dict[int, dict] = {}
    for key, value, where in entries:
        if isinstance(key, str) and re.fullmatch(r"\s*\d+\s*", key):
            key = int(key)
        if isinstance(key, bool) or not isinstance(key, int):
            raise DataError(path, record=where, field="id", reason=f"must be an integer id, got {key!r:.60}")
        title = value.get("title")
        if not isinstance(title, str) or not clean_text(title):
            raise DataError(path, record=where, field="title", reason=f"must be a non-empty string, got {title!r:.60}")
        description = value.get("description") or ""
        if isinstance(description, list) and all(isinstance(d, str) for d in description):
            description = " ".join(description)
        if not isinstance(description, str):
            raise DataError(path, record=where, field="description", reason="must be a string or list of strings")
        if key in out:
            raise DataError(path, record=where, field="id", reason=f"duplicate id {key}")
        out[key] = {"title": clean_text(title), "description": clean_text(description)}
    return out


@dataclass
class CsvSample:
    split: str
    line: int
    user: str
    history: list[Interaction]
    target: Interaction


def read_csv_split(path: Path, split: str, titles: dict[int, tuple[str, str]]) -> list[CsvSample]:
    """The samples of one CSV file; ``titles`` collects ``{id: (title, where first seen)}`` and must agree."""
    with _open_text(path) as fh:
        header = next(csv.reader(fh), [])
    optional = [c for c in ("history_rating", "rating", "history_timestamp", "timestamp") if c in header]
    out = []
    for line, row in iter_csv(path, [*CSV_COLUMNS, *optional]):
        ids = _list_ids(_literal_list(row["history_item_id"], path, line, "history_item_id"), path, line,
                        "history_item_id")
        names = _literal_list(row["history_item_title"], path, line, "history_item_title")
        if not all(isinstance(t, str) for t in names):
            raise DataError(path, line=line, field="history_item_title", reason="titles must be strings")
        if len(names) != len(ids):
            raise DataError(path, line=line, field="history_item_title",
                            reason=f"{len(names)} titles for {len(ids)} history_item_id values")
        target = _list_ids([row["item_id"].strip()], path, line, "item_id")[0]
        ratings = times = None
        if "history_rating" in optional:
            ratings = [_rating(r, "history_rating", path, line)
                       for r in _literal_list(row["history_rating"], path, line, "history_rating")]
        if "history_timestamp" in optional:
            times = [_seconds(_as_number(t, "history_timestamp", path, line))
                     for t in _literal_list(row["history_timestamp"], path, line, "history_timestamp")]
        for field, values in (("history_rating", ratings), ("history_timestamp", times)):
            if values is not None and len(values) != len(ids):
                raise DataError(path, line=line, field=field, reason=f"{len(values)} values for {len(ids)} items")
        for iid, title, field in [*((i, t, "history_item_title") for i, t in zip(ids, names)),
                                  (target, row["item_title"], "item_title")]:
            title = clean_text(title)
            known = titles.setdefault(iid, (title, f"{path.parent.name}/{path.name} line {line}"))
            if known[0] != title:
                raise DataError(path, line=line, field=field,
                                reason=f"id {iid} is titled {title!r} here but {known[0]!r} in {known[1]}")
        rating = _rating(row["rating"], "rating", path, line) if "rating" in optional else None
        ts = _seconds(_as_number(row["timestamp"], "timestamp", path, line)) if "timestamp" in optional else None
        later = next((k for k, t in enumerate(times or []) if ts is not None and t > ts), None)
        if later is not None:
            raise DataError(path, line=line, field="history_timestamp",
                            reason=f"history item {later + 1} (time {times[later]}) is later than the target (time "
                                   f"{ts}); a time delta cannot be negative")
        history = [Interaction(i, None if ratings is None else ratings[k], None if times is None else times[k])
                   for k, i in enumerate(ids)]
        out.append(CsvSample(split, line, row["user_id"].strip(), history, Interaction(target, rating, ts)))
    return out


def csv_catalog(titles: dict[int, tuple[str, str]], index: dict[int, dict] | None,
                index_path: Path | None) -> list[dict]:
    """Catalog rows: every item of the index (CSV titles must match it), else every item the CSV files name."""
    if index is None:
        return [catalog_item(i, titles[i][0]) for i in sorted(titles)]
    for iid, (title, where) in titles.items():
        if iid not in index:
            raise DataError(index_path, record=f"id {iid}", reason=f"id used in {where} is not in the item index")
        if index[iid]["title"] != title:
            raise DataError(index_path, record=f"id {iid}",
                            reason=f"title {index[iid]['title']!r} differs from {title!r} in {where}")
    return [catalog_item(i, m["title"], description=m["description"] or None) for i, m in sorted(index.items())]


def build_csv(raw_dir, output_dir, *, category: str, name: str | None = None, category_text: str | None = None,
              item_index: str | None = None, max_history: int = 20, max_users: int | None = None, seed: int = 0,
              progress: bool = True, quiet: bool = False) -> dict:
    """BIGRec / D3-style ``train`` / ``valid`` / ``test`` CSV files (+ item index JSON) -> processed data set."""
    _check_options(output_dir, max_history, 1, (0.8, 0.1, 0.1))
    raw = Path(raw_dir)
    name = name or f"csv-{category}"
    category_text = category_text or category_name(category)
    skips = SkipCounter()
    files = find_csv_files(raw, category)
    index_path = Path(item_index) if item_index else _find_item_index(raw, category)
    index = read_item_index(index_path, "--item_index" if item_index else None) if index_path is not None else None
    titles: dict[int, tuple[str, str]] = {}
    samples = [s for split in SPLITS if split in files for s in read_csv_split(files[split], split, titles)]
    _check_splits_disjoint(samples, files)
    catalog_items = csv_catalog(titles, index, index_path)
    warnings = []
    if index is None:
        warnings.append(f"no item index found ({raw}/*.json or {raw}/index/{category}.item.json); the catalog holds "
                        f"only the {len(titles)} items the CSV files name (items never interacted with are missing; "
                        "pass --item_index)")
        print(f"warning: {warnings[-1]}", file=sys.stderr, flush=True)
    by_id = {it["id"]: it for it in catalog_items}
    keep = keep_users_sample(list({s.user for s in samples}), max_users, seed, skips)

    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    users: dict[str, set[str]] = {s: set() for s in SPLITS}
    cut = 0
    for s in tqdm(samples, desc=f"{name} samples", unit="sample", disable=not progress, mininterval=1.0):
        if s.user not in keep:
            continue
        if not s.history:
            skips.skip(f"{s.split}: row with an empty history")
            continue
        cut += len(s.history) > max_history
        records[s.split].append(make_record(f"{name}/{s.split}/line{s.line}", s.history[-max_history:], s.target,
                                            by_id, category_text, max_history))
        users[s.split].add(s.user)
    train_popularity(records, catalog_items)
    last_train = max((r["timestamp"] for r in records["train"] if r["timestamp"] is not None), default=None)
    earlier = {s: sum(1 for r in records[s] if last_train is not None and r["timestamp"] is not None
                      and r["timestamp"] < last_train) for s in ("validation", "test")}
    summary = _summary(
        name, "csv", raw, category_text,
        {"category": category, "item_index": str(index_path) if index_path else None, "max_history": max_history,
         "max_users": max_users, "seed": seed},
        {"rows": len(samples), "items named in the CSV files": len(titles),
         "item index entries": len(index) if index is not None else None},
        {s: len(users[s]) for s in SPLITS},
        {**({CSV_NO_INDEX: len(titles)} if index is None else {}), "histories cut to max_history": cut,
         "validation targets earlier than the last train target (the files' own split)": earlier["validation"],
         "test targets earlier than the last train target (the files' own split)": earlier["test"]},
        skips, inputs={s: str(p) for s, p in files.items()}, **({"warnings": warnings} if warnings else {}))
    return save_processed(output_dir, records, catalog_items, summary, quiet=quiet, progress=progress)


def _check_splits_disjoint(samples: Sequence[CsvSample], files: Mapping[str, Path]) -> None:
    """Refuse a sample (user, history, item, timestamp) found in two split files: test rows also in train leak."""
    first: dict[tuple, CsvSample] = {}
    shared: Counter = Counter()
    example: dict[tuple[str, str], tuple[CsvSample, CsvSample]] = {}
    for s in samples:
        key = (s.user, tuple(h.item for h in s.history), s.target.item, s.target.timestamp)
        other = first.setdefault(key, s)
        if other.split != s.split:
            shared[other.split, s.split] += 1
            example.setdefault((other.split, s.split), (other, s))
    if shared:
        (earlier, later), n = next(iter(shared.items()))
        a, b = example[earlier, later]
        raise DataError(files[later], line=b.line, reason=f"the same sample (user, history, item, timestamp) as "
                        f"{files[earlier]} line {a.line}; {n} rows of the {later} file are also in the {earlier} "
                        "file (the splits must not overlap)")


def _find_item_index(raw: Path, category: str) -> Path | None:
    """The one ``*.json`` in ``raw``, or ``index/<Category>.item.json`` where the BIGRec / D3 layout keeps it."""
    d3 = raw / "index" / f"{category}.item.json"
    found = [*sorted(raw.glob("*.json")), *([d3] if d3.exists() else [])]
    if len(found) > 1:
        raise DataError(raw, reason=f"several JSON files {[p.name for p in found]}; pick the item index with "
                                    "--item_index")
    return found[0] if found else None
