"""Amazon product reviews -> processed sequential data set with RecPO (R²ec) prompts. Three input formats.

Usage::

    python -m preprocess.amazon --format 2023 --raw_dir raw/amazon2023 --category Video_Games \
        --output_dir processed_datasets/amazon23-games
    python -m preprocess.amazon --format atomic --raw_dir ../shared/data/amazon18_games_llmrank --category Games \
        --output_dir processed_datasets/amazon18-games
    python -m preprocess.amazon --format csv --raw_dir raw/d3/Video_Games --category Video_Games \
        --output_dir processed_datasets/d3-games

Formats (``--format``):

* ``2023`` — Amazon Reviews 2023 (McAuley Lab) as R²ec's released ``preprocess.py`` builds it. Files in
  ``--raw_dir``: reviews ``<Category>.jsonl`` (or ``.jsonl.gz``; rows with ``user_id``, ``parent_asin``,
  ``rating``, ``timestamp`` in milliseconds, ...) or the benchmark's rating-only file ``<Category>.csv`` (or
  ``.csv.gz``; header ``user_id,parent_asin,rating,timestamp``: the 5-core file R²ec downloads), and metadata
  ``meta_<Category>.jsonl`` (or ``.jsonl.gz``; rows with ``parent_asin``, ``title``, ``average_rating``,
  ``rating_number``, ``description`` (list of str), ``price``, ...). Steps:

  1. items: metadata rows with a title of at most ``--max_title_words`` (20) words, not HTML markup, and (as the
     released code does) a numeric ``price`` (``--keep_items_without_price`` turns that off); titles and
     descriptions are HTML-unescaped, tags removed, whitespace collapsed;
  2. reviews: a user's repeated reviews of an item keep the earliest (the benchmark's convention);
     ``--source_kcore`` (default 5 for JSON Lines reviews, 0 for the already 5-core rating-only CSV) applies the
     k-core filter to the whole review file first, which is how the benchmark's 5-core file is made; then reviews
     of items kept in step 1;
  3. window: reviews with ``start <= time < end`` (default 2022-10-01 .. 2023-10-01, UTC), then the released
     in-window k-core (``--window_kcore``, default 0); while fewer than ``--min_items`` (10,000) items remain and
     the window's start year is after the earliest review's year, the start moves back 3 months;
  4. samples: each user's reviews in time order; every prefix is a sample (target = item t >= 1, history = the up
     to ``--max_history`` (20) previous items with their ratings and times);
  5. split: global, by target time: T1/T2 are the 80% / 90% quantiles of all target times; train = ts <= T1,
     validation = T1 < ts <= T2, test = ts > T2. Ties at a cut go to the earlier split, so every validation/test
     target is strictly later than every train target (the released code cuts the sorted list by index, which can
     put equal times on both sides). ``timestamp`` is stored in unix seconds.

* ``atomic`` — Amazon 2018 RecBole atomic files as RUCAIBox/LLMRank ships them: ``<Category>.item``
  (``item_id:token  title:token_seq``) and leave-one-out ``*.valid.inter`` / ``*.test.inter``
  (``user_id:token  item_id_list:token_seq  item_id:token``). There is no train file and no time. Per user, with
  validation history h (oldest first) and validation target v, the test row must be (h + [v], t). Samples:
  validation = (h, v); test = (h + [v], t); train = every prefix inside h (target h[i] for i >= 1, the LLMRank /
  leave-one-out convention), so every train target precedes the user's validation target, which precedes the test
  target (no leakage along a user's sequence; across users leave-one-out has no global time cut). ``timestamp``
  is null and the prompt has no time deltas or ratings. Every item of the ``.item`` file is in the catalog.

* ``csv`` — the per-category CSV layout of BIGRec / D3-style repositories: ``train`` / ``valid`` / ``test`` CSV
  files (the split from the file or folder name, e.g. ``train/Video_Games_5_2016-10-2018-11.csv`` or
  ``valid.csv``; with several CSV files per split, the one whose name contains ``--category``), columns
  ``user_id, history_item_title, item_title, history_item_id, item_id`` (history columns are Python list literals,
  read with ``ast.literal_eval``) and, when present, ``history_rating, rating, history_timestamp, timestamp``
  (seconds or milliseconds; ratings in [0, 5]; no history time after the target's). Item metadata: ``--item_index``
  (default: the one ``*.json`` file in ``--raw_dir``, else ``--raw_dir/index/<Category>.item.json``, where the
  BIGRec / D3 layout keeps it), either ``{"<id>": {"title": ..., "description": ...}}`` or a list of ``{"id"|"item_id",
  "title", "description"}``; without one the catalog is built from the CSV titles alone, with a warning and the
  count in ``summary.json``. Splits are used as given: split files that are the same file, have the same content or
  share a sample (user, history, item, timestamp) are refused, and the summary counts validation/test targets
  earlier than the last train target (the files' own leakage, if any).

Records (every format): ``history`` = catalog ids, oldest first, at most ``--max_history``; ``target``; ``groundtruth``
= [target]; ``seen`` = history (history items are never recommended, as R²ec masks them); ``timestamp``; the
optional contract fields ``history_ratings`` (the user's rating of each history item) and ``history_time_deltas``
(seconds from each history item to the target), null where the source lacks them (atomic: both; csv: without the
columns); ``prompt`` = ``preprocess.recpo_prompts.record_user_prompt(record, catalog, category, max_history)``, the
very text the RecPO trainer re-renders from the record; ``completion`` = the target's title (N = 1: the data has one
next item per sample and yearless titles, so an SFT / list method learns to name that one item).

Catalog items: ``{"id", "title", "year": null, "average_rating", "rating_number", "description", "text", ...}``: the
raw fields ``recpo_prompts.item_prompt`` reads (null when unknown) and ``text``, the item prompt's key: value lines
(``recpo_prompts.item_attributes``) for display and text encoders. ``summary.json`` records the category wording
(``recpo.category``, from ``recpo_prompts.category_name``) a trainer passes as ``--category``.

``--max_users N`` keeps a seeded random sample of N users (after all filters; the rest is counted as skipped).
"""
from __future__ import annotations

import argparse
import ast
import csv
import gzip
import html
import json
import math
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tqdm import tqdm

from preprocess.common import (
    SkipCounter,
    check_split_fractions_option,
    format_completion,
    int_at_least,
    item_line,
    json_loads_unique,
    read_text_utf8,
    require_file,
    split_from_name,
)
from preprocess.contract import SPLITS, DataError, check_output_dir, is_finite_number, save_processed
from preprocess.recpo_prompts import category_name, item_attributes, record_user_prompt

# --------------------------------------------------------------------------------------------------------------
# Field checks and text cleaning
# --------------------------------------------------------------------------------------------------------------

_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")


def clean_text(raw: str) -> str:
    """HTML entities unescaped, tags removed, whitespace (newlines, tabs) collapsed to one space."""
    return _SPACES.sub(" ", _TAGS.sub(" ", html.unescape(raw))).strip()


def _required(row: Mapping, field: str, path, line: int) -> Any:
    if field not in row or row[field] is None or row[field] == "":
        raise DataError(path, line=line, field=field, reason="missing")
    return row[field]


def _as_str(value: Any, field: str, path, line: int) -> str:
    if not isinstance(value, str):
        raise DataError(path, line=line, field=field, reason=f"must be a string, got {type(value).__name__}")
    return value


def _as_number(value: Any, field: str, path, line: int) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not is_finite_number(value):
        raise DataError(path, line=line, field=field, reason=f"must be a number, got {value!r:.60}")
    return float(value)


def _as_int(value: Any, field: str, path, line: int) -> int:
    number = _as_number(value, field, path, line)
    if not number.is_integer():
        raise DataError(path, line=line, field=field, reason=f"must be an integer, got {value!r:.60}")
    return int(number)


def _rating(value: Any, field: str, path, line: int) -> float:
    rating = _as_number(value, field, path, line)
    if not 0 <= rating <= 5:  # Amazon ratings are 1-5 stars; RecPO prompts show them "out of 5"
        raise DataError(path, line=line, field=field, reason=f"a rating must be in [0, 5], got {rating}")
    return rating


def _open_text(path: Path):
    """A text file (plain or .gz) as UTF-8; a leading byte-order mark (Excel's CSV export) is dropped."""
    require_file(path, "a CSV file" if ".csv" in path.suffixes else "a file")
    return gzip.open(path, "rt", encoding="utf-8-sig", newline="") if path.suffix == ".gz" else \
        open(path, encoding="utf-8-sig", newline="")


def iter_jsonl(path: Path, desc: str | None = None, progress: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of a JSON Lines file (plain or .gz); blank lines are ignored; a malformed line or
    a line that is not a JSON object is a DataError naming the file and line."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
        for number, raw in enumerate(tqdm(fh, desc=desc or path.name, unit=" lines", disable=not progress,
                                          mininterval=1.0), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))  # a BOM may open line 1
            except UnicodeDecodeError as err:
                raise DataError(path, line=number, reason=f"not valid UTF-8 (column {err.start + 1})") from None
            except json.JSONDecodeError as err:
                raise DataError(path, line=number, reason=f"malformed JSON ({err.msg}, column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(path, line=number, reason=f"expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def iter_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of a CSV file with a header (plain or .gz); missing columns or cells, an empty file and
    a file with only a header are DataErrors."""
    try:
        with _open_text(path) as fh:
            reader = csv.DictReader(fh)
            header, rows = reader.fieldnames, 0
            if header is None:
                raise DataError(path, reason="the file is empty (expected a CSV header line)")
            for name in required:
                if name not in header:
                    raise DataError(path, line=1, field=name, reason=f"missing column in header {header}")
            for row in reader:
                for name in required:
                    if row.get(name) is None or row[name].strip() == "":
                        raise DataError(path, line=reader.line_num, field=name, reason="missing value")
                rows += 1
                yield reader.line_num, row
            if not rows:
                raise DataError(path, line=1, reason="no data rows (only a header)")
    except UnicodeDecodeError as err:
        raise DataError(path, reason=f"not valid UTF-8 ({err.reason})") from None
    except csv.Error as err:
        raise DataError(path, reason=f"malformed CSV: {err}") from None


def _find_one(raw: Path, stems: Sequence[str], suffixes: Sequence[str]) -> Path | None:
    found = [require_file(raw / f"{s}{x}") for s in stems for x in suffixes if (raw / f"{s}{x}").exists()]
    if len(found) > 1:
        raise DataError(raw, reason=f"several candidate files {[p.name for p in found]}; keep one")
    return found[0] if found else None


# --------------------------------------------------------------------------------------------------------------
# Shared steps: interactions -> per-user sequences -> samples -> records
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)  # millions of them for a large category
class Interaction:
    item: int  # catalog id
    rating: float | None
    timestamp: int | None  # unix seconds


def _iso(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def catalog_item(item_id: int, title: str, average_rating: float | None = None, rating_number: int | None = None,
                 description: str | None = None, **extra) -> dict:
    """A catalog item with the raw fields the RecPO item prompt reads (null when the source lacks them) and
    ``text``, those fields as the item prompt's key: value lines (for display and text encoders)."""
    item = {"id": item_id, "title": title, "year": None, **extra, "average_rating": average_rating,
            "rating_number": rating_number, "description": description or None}
    item["text"] = item_attributes(item)
    return item


def keep_users_sample(users: Sequence[str], max_users: int | None, seed: int, skips: SkipCounter) -> set[str]:
    """All users, or a seeded random sample of ``max_users`` (the others counted in ``skips``)."""
    users = sorted(users)
    if max_users is None or len(users) <= max_users:
        return set(users)
    keep = set(random.Random(f"{seed}/users").sample(users, max_users))
    skips.skip(f"user not in the --max_users={max_users} sample (seed {seed})", len(users) - max_users)
    return keep


def make_record(sample_id: str, history: Sequence[Interaction], target: Interaction, catalog: Mapping[int, dict],
                category: str, max_history: int) -> dict:
    """One record; ``history_ratings`` / ``history_time_deltas`` where every history item has a rating / a time
    (and the target a time), else null; ``prompt`` is ``record_user_prompt`` of the record itself, the text the
    RecPO trainer re-renders from it."""
    ids = [h.item for h in history]
    ratings = [h.rating for h in history]
    times = [h.timestamp for h in history]
    record = {
        "sample_id": sample_id,
        "prompt": None,
        "completion": format_completion([item_line(catalog[target.item]["title"], None)]),
        "groundtruth": [target.item],
        "seen": list(ids),
        "history": ids,
        "target": target.item,
        "timestamp": target.timestamp,
        "history_ratings": None if None in ratings else ratings,
        "history_time_deltas": None if target.timestamp is None or None in times else
        [float(target.timestamp - t) for t in times],
    }
    record["prompt"] = record_user_prompt(record, catalog, category, max_history)
    return record


def prefix_samples(sequences: Mapping[str, Sequence[Interaction]], min_history: int,
                   skips: SkipCounter) -> list[tuple[str, int]]:
    """Every ``(user, t)`` with at least ``min_history`` earlier items (every prefix of a user's sequence)."""
    positions = [(u, t) for u, seq in sequences.items() for t in range(min_history, len(seq))]
    short = sum(1 for seq in sequences.values() if len(seq) <= min_history)
    skips.skip(f"user with <= min_history={min_history} interactions (no sample)", short)
    return positions


def temporal_cuts(target_times: Sequence[int], split_fractions) -> tuple[int, int]:
    """``(T1, T2)``: the train and train+validation quantiles of the target times (ties go to the earlier split)."""
    ts = sorted(target_times)
    n = len(ts)
    f_train, f_val, _ = split_fractions
    return ts[max(0, math.ceil(f_train * n) - 1)], ts[max(0, math.ceil((f_train + f_val) * n) - 1)]


def split_by_time(positions, sequences, t1: int, t2: int) -> dict[str, list[tuple[str, int]]]:
    by_split: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for user, t in positions:
        ts = sequences[user][t].timestamp
        by_split["train" if ts <= t1 else ("validation" if ts <= t2 else "test")].append((user, t))
    return by_split


def position_records(by_split, sequences, catalog: Mapping[int, dict], *, name: str, category: str,
                     max_history: int, progress: bool) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    total = sum(len(v) for v in by_split.values())
    with tqdm(total=total, desc=f"{name} samples", unit="sample", disable=not progress, mininterval=1.0) as bar:
        for split in SPLITS:
            for user, t in by_split[split]:
                seq = sequences[user]
                out[split].append(make_record(f"{name}/u{user}/t{t}", seq[max(0, t - max_history):t], seq[t],
                                              catalog, category, max_history))
                bar.update(1)
    return out


def train_popularity(records: Mapping[str, list[dict]], catalog_items: list[dict]) -> None:
    """``popularity`` of every catalog item = its count as a train target."""
    counts = Counter(r["target"] for r in records["train"])
    for it in catalog_items:
        it["popularity"] = counts.get(it["id"], 0)


def _check_options(output_dir, max_history: int, min_history: int, split_fractions) -> None:
    if output_dir is None:
        raise ValueError("output_dir is required")
    check_output_dir(output_dir)
    if max_history < 1 or min_history < 1:
        raise ValueError("max_history >= 1 and min_history >= 1 are required")
    if min(split_fractions) < 0 or abs(sum(split_fractions) - 1) > 1e-9 or split_fractions[0] <= 0:
        raise ValueError(f"split_fractions must be >= 0, sum to 1, train > 0; got {split_fractions}")


def _summary(name: str, fmt: str, source, category: str, options: dict, read: dict, by_split_users: dict,
             stats: dict, skips: SkipCounter, **extra) -> dict:
    return {
        "dataset": name,
        "builder": "preprocess.amazon",
        "format": fmt,
        "source": str(source),
        "recpo": {"category": category},
        "options": options,
        "read": read,
        "users_note": "distinct users with a sample in the split",
        "splits": {s: {"users": by_split_users.get(s, 0)} for s in SPLITS},
        **extra,
        "stats": stats,
        "skipped": skips.as_dict(),
    }


# --------------------------------------------------------------------------------------------------------------
# Format 2023: Amazon Reviews 2023 JSON Lines (R²ec)
# --------------------------------------------------------------------------------------------------------------

HTML_TITLE = "<span id"


@dataclass(slots=True)
class Review:
    user: str
    asin: str
    rating: float
    ms: int  # milliseconds, the dataset's unit


def find_2023_files(raw: Path, category: str) -> tuple[Path, Path]:
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw_dir {raw} is not a directory")
    reviews = _find_one(raw, [category], [".jsonl", ".jsonl.gz", ".csv", ".csv.gz"])
    meta = _find_one(raw, [f"meta_{category}"], [".jsonl", ".jsonl.gz"])
    if reviews is None or meta is None:
        raise DataError(raw, reason=f"expected {category}.jsonl(.gz) (or the rating-only {category}.csv(.gz)) and "
                                    f"meta_{category}.jsonl(.gz) (Amazon Reviews 2023; see docs/data.md 'Amazon data')")
    return reviews, meta



def read_meta_2023(path: Path, *, max_title_words: int, require_price: bool, skips: SkipCounter,
                   progress: bool) -> tuple[dict[str, dict], set[str]]:
    """``{parent_asin: {"title", "average_rating", "rating_number", "description"}}`` of the usable items, and
    every parent_asin the metadata lists; each item left out is counted in ``skips`` by reason."""
    items: dict[str, dict] = {}
    listed: set[str] = set()
    for line, row in iter_jsonl(path, desc=path.name, progress=progress):
        asin = _as_str(_required(row, "parent_asin", path, line), "parent_asin", path, line)
        if asin in listed:
            skips.skip("metadata: repeated parent_asin (first row kept)")
            continue
        listed.add(asin)
        title = row.get("title")
        if title is not None:
            title = _as_str(title, "title", path, line)
        if title is None or not clean_text(title):
            skips.skip("metadata: item without a title")
            continue
        if HTML_TITLE in title:
            skips.skip("metadata: title is HTML markup")
            continue
        title = clean_text(title)
        if len(title.split()) > max_title_words:
            skips.skip(f"metadata: title longer than {max_title_words} words")
            continue
        if require_price:
            try:
                float(row.get("price"))
            except (TypeError, ValueError):
                skips.skip("metadata: no numeric price (R²ec's preprocess drops these; --keep_items_without_price)")
                continue
        average = row.get("average_rating")
        average = None if average is None else _as_number(average, "average_rating", path, line)
        buyers = row.get("rating_number")
        buyers = None if buyers is None else _as_int(buyers, "rating_number", path, line)
        description = row.get("description") or []
        if isinstance(description, str):
            description = [description]
        if not isinstance(description, list) or not all(isinstance(d, str) for d in description):
            raise DataError(path, line=line, field="description",
                            reason=f"must be a list of strings, got {type(description).__name__}")
        items[asin] = {"title": title, "average_rating": average, "rating_number": buyers,
                       "description": clean_text(" ".join(description))}
    return items, listed


def read_reviews_2023(path: Path, *, progress: bool) -> list[Review]:
    """Review rows (JSON Lines) or rating-only rows (CSV), in file order; bad fields are DataErrors."""
    if path.name.endswith((".csv", ".csv.gz")):
        rows = tqdm(iter_csv(path, ("user_id", "parent_asin", "rating", "timestamp")), desc=path.name,
                    unit=" lines", disable=not progress, mininterval=1.0)
    else:
        rows = iter_jsonl(path, desc=path.name, progress=progress)
    out: list[Review] = []
    for line, row in rows:
        user = _as_str(_required(row, "user_id", path, line), "user_id", path, line)
        asin = _as_str(_required(row, "parent_asin", path, line), "parent_asin", path, line)
        rating = _as_number(_required(row, "rating", path, line), "rating", path, line)
        if not 0 <= rating <= 5:
            raise DataError(path, line=line, field="rating", reason=f"must be in [0, 5], got {rating}")
        ms = _as_int(_required(row, "timestamp", path, line), "timestamp", path, line)
        out.append(Review(user, asin, rating, ms))
    return out


def first_reviews(reviews: list[Review], skips: SkipCounter) -> list[Review]:
    """A user's repeated reviews of one item keep the earliest (ties: the first in the file); file order kept."""
    best: dict[tuple[str, str], int] = {}
    for index, r in enumerate(reviews):
        key = (r.user, r.asin)
        if key not in best:
            best[key] = index
        else:
            skips.skip("review: repeated (user, item) pair (earliest kept)")
            if r.ms < reviews[best[key]].ms:
                best[key] = index
    return [reviews[i] for i in sorted(best.values())]


def kcore(reviews: list[Review], k: int) -> list[Review]:
    """Iteratively drop users and items with fewer than ``k`` reviews until nothing is left to drop."""
    if k <= 1:
        return reviews
    while True:
        users = Counter(r.user for r in reviews)
        items = Counter(r.asin for r in reviews)
        kept = [r for r in reviews if users[r.user] >= k and items[r.asin] >= k]
        if len(kept) == len(reviews):
            return kept
        reviews = kept


def usable_reviews(reviews: list[Review], meta: Mapping[str, dict], listed: set[str], source_kcore: int,
                   skips: SkipCounter) -> list[Review]:
    """First review per (user, item), the whole-file k-core, then reviews of usable items (each drop counted)."""
    reviews = first_reviews(reviews, skips)
    cored = kcore(reviews, source_kcore)
    skips.skip(f"review: removed by the {source_kcore}-core filter of the whole review file", len(reviews) - len(cored))
    kept = []
    for r in cored:
        if r.asin in meta:
            kept.append(r)
        elif r.asin in listed:
            skips.skip("review: of an item left out of the metadata (reasons above)")
        else:
            skips.skip("review: of an item missing from the metadata file")
    return kept


def _utc_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp() * 1000)


def _months_back(year: int, month: int, n: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) - n
    return index // 12, index % 12 + 1


def moving_window(reviews: list[Review], start: tuple[int, int], end: tuple[int, int], *, window_kcore: int,
                  min_items: int, skips: SkipCounter) -> tuple[list[Review], tuple[int, int], list[dict]]:
    """The reviews in ``[start, end)`` (UTC month starts) after the in-window k-core; the start moves back 3 months
    while fewer than ``min_items`` items remain and its year is after the earliest review's year (the released
    rule). Returns the reviews, the final start and one entry per window tried."""
    if not reviews:
        return [], start, []
    first_year = datetime.fromtimestamp(min(r.ms for r in reviews) / 1000, tz=timezone.utc).year
    end_ms = _utc_ms(*end)
    log = []
    while True:
        start_ms = _utc_ms(*start)
        inside = [r for r in reviews if start_ms <= r.ms < end_ms]
        window = kcore(inside, window_kcore)
        n_items = len({r.asin for r in window})
        log.append({"start": f"{start[0]}-{start[1]:02d}-01", "items": n_items, "reviews": len(window)})
        if n_items >= min_items or start[0] <= first_year:
            break
        start = _months_back(*start, 3)
    skips.skip("review: outside the final time window", len(reviews) - len(inside))
    skips.skip(f"review: removed by the in-window {window_kcore}-core filter", len(inside) - len(window))
    return window, start, log


def sequences_2023(reviews: list[Review], meta: Mapping[str, dict], max_users: int | None, seed: int,
                   skips: SkipCounter) -> tuple[dict[str, list[Interaction]], list[dict], dict[int, dict]]:
    """Each kept user's interactions in time order (ties: file order), and the catalog of their items (ids by
    sorted parent_asin)."""
    per_user: dict[str, list[Review]] = defaultdict(list)
    for r in reviews:
        per_user[r.user].append(r)
    keep = keep_users_sample(list(per_user), max_users, seed, skips)
    asins = sorted({r.asin for u in keep for r in per_user[u]})
    id_of = {a: i for i, a in enumerate(asins)}
    catalog_items = []
    for asin in asins:
        catalog_items.append(catalog_item(id_of[asin], asin=asin, **meta[asin]))
    sequences = {}
    for user in sorted(keep):
        ordered = sorted(per_user[user], key=lambda r: r.ms)  # stable: ties keep file order
        sequences[user] = [Interaction(id_of[r.asin], r.rating, r.ms // 1000) for r in ordered]
    return sequences, catalog_items, {it["id"]: it for it in catalog_items}


def build_2023(raw_dir, output_dir, *, category: str, name: str | None = None, category_text: str | None = None,
               window_start: tuple[int, int] = (2022, 10), window_end: tuple[int, int] = (2023, 10),
               min_items: int = 10_000, max_title_words: int = 20, require_price: bool = True,
               source_kcore: int | None = None, window_kcore: int = 0, max_history: int = 20, min_history: int = 1,
               split_fractions=(0.8, 0.1, 0.1), max_users: int | None = None, seed: int = 0,
               progress: bool = True, quiet: bool = False) -> dict:
    """Amazon Reviews 2023 (``<Category>.jsonl`` + ``meta_<Category>.jsonl``) -> processed data set."""
    _check_options(output_dir, max_history, min_history, split_fractions)
    raw = Path(raw_dir)
    name = name or f"amazon23-{category}"
    category_text = category_text or category_name(category)
    skips = SkipCounter()
    review_path, meta_path = find_2023_files(raw, category)
    if source_kcore is None:  # the rating-only CSV is the benchmark's 5-core file already
        source_kcore = 0 if review_path.name.endswith((".csv", ".csv.gz")) else 5

    meta, listed = read_meta_2023(meta_path, max_title_words=max_title_words, require_price=require_price,
                                  skips=skips, progress=progress)
    reviews = read_reviews_2023(review_path, progress=progress)
    read = {"metadata items": len(listed), "usable items": len(meta), "reviews": len(reviews)}
    reviews = usable_reviews(reviews, meta, listed, source_kcore, skips)
    reviews, start, windows = moving_window(reviews, window_start, window_end, window_kcore=window_kcore,
                                            min_items=min_items, skips=skips)
    sequences, catalog_items, by_id = sequences_2023(reviews, meta, max_users, seed, skips)
    positions = prefix_samples(sequences, min_history, skips)
    if not positions:
        raise DataError(review_path, reason="no sample left after filtering (see the skip counts: "
                                            f"{skips.as_dict()})")
    t1, t2 = temporal_cuts([sequences[u][t].timestamp for u, t in positions], split_fractions)
    by_split = split_by_time(positions, sequences, t1, t2)
    records = position_records(by_split, sequences, by_id, name=name, category=category_text,
                               max_history=max_history, progress=progress)
    train_popularity(records, catalog_items)

    summary = _summary(
        name, "2023", raw, category_text,
        {"category": category, "window_start": f"{window_start[0]}-{window_start[1]:02d}-01",
         "window_end": f"{window_end[0]}-{window_end[1]:02d}-01", "min_items": min_items,
         "max_title_words": max_title_words, "require_price": require_price, "source_kcore": source_kcore,
         "window_kcore": window_kcore, "max_history": max_history, "min_history": min_history,
         "split_fractions": list(split_fractions), "max_users": max_users, "seed": seed},
        read, {s: len({u for u, _ in by_split[s]}) for s in SPLITS},
        {"users": len(sequences), "items": len(catalog_items),
         "interactions": sum(len(s) for s in sequences.values()),
         "final window start": f"{start[0]}-{start[1]:02d}-01"},
        skips, inputs=[str(review_path), str(meta_path)], windows_tried=windows,
        split_cuts={"train_end": t1, "train_end_utc": _iso(t1), "validation_end": t2,
                    "validation_end_utc": _iso(t2)})
    return save_processed(output_dir, records, catalog_items, summary, quiet=quiet, progress=progress)


# --------------------------------------------------------------------------------------------------------------
# Format atomic: Amazon 2018 RecBole atomic files (LLMRank), leave-one-out
# --------------------------------------------------------------------------------------------------------------


def _atomic_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a RecBole atomic file as ``{column: text}`` (header ``name:type``, tab-separated)."""
    with open(require_file(path, "a RecBole atomic file"), "rb") as fh:
        header = None
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(path, line=number, reason=f"not valid UTF-8 (column {err.start + 1})") from None
            if header is None:
                header = [h.split(":", 1)[0].strip() for h in text.split("\t")]
                for name in required:
                    if name not in header:
                        raise DataError(path, line=1, field=name, reason=f"missing column in header {header}")
                continue
            if not text.strip():
                continue
            parts = text.split("\t")
            if len(parts) != len(header):
                raise DataError(path, line=number, reason=f"expected {len(header)} tab-separated fields, got "
                                                          f"{len(parts)}")
            yield number, dict(zip(header, parts))
        if header is None:
            raise DataError(path, line=1, reason="empty file (expected a typed header such as item_id:token)")


def _atomic_id(text: str, path: Path, line: int, field: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise DataError(path, line=line, field=field, reason=f"must be a non-negative integer id, got {text!r:.60}")
    return int(text)


def find_atomic_files(raw: Path, category: str) -> tuple[Path, Path, Path]:
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw_dir {raw} is not a directory")
    item = raw / f"{category}.item"
    valid = sorted(raw.glob(f"{category}*.valid.inter"))
    test = sorted(raw.glob(f"{category}*.test.inter"))
    if not item.is_file() or len(valid) != 1 or len(test) != 1:
        raise DataError(raw, reason=f"expected {category}.item and one {category}*.valid.inter and "
                                    f"{category}*.test.inter; found item={item.is_file()}, valid="
                                    f"{[p.name for p in valid]}, test={[p.name for p in test]}")
    return item, valid[0], test[0]


def read_atomic_items(path: Path) -> list[dict]:
    items, seen = [], set()
    for line, row in _atomic_rows(path, ("item_id", "title")):
        iid = _atomic_id(row["item_id"], path, line, "item_id")
        if iid in seen:
            raise DataError(path, line=line, field="item_id", reason=f"duplicate item id {iid}")
        seen.add(iid)
        title = clean_text(row["title"])
        if not title:
            raise DataError(path, line=line, field="title", reason="empty title")
        items.append(catalog_item(iid, title))
    if not items:
        raise DataError(path, reason="the item file lists no items")
    return items


def read_atomic_sequences(path: Path, catalog_ids: set[int]) -> dict[str, tuple[int, list[int], int]]:
    """``{user: (line, history ids, target id)}`` of a leave-one-out ``.inter`` file."""
    out = {}
    for line, row in _atomic_rows(path, ("user_id", "item_id_list", "item_id")):
        user = row["user_id"].strip()
        if not user:
            raise DataError(path, line=line, field="user_id", reason="missing")
        if user in out:
            raise DataError(path, line=line, field="user_id", reason=f"user {user!r} appears twice")
        history = [_atomic_id(t, path, line, "item_id_list") for t in row["item_id_list"].split()]
        target = _atomic_id(row["item_id"], path, line, "item_id")
        missing = [i for i in [*history, target] if i not in catalog_ids]
        if missing:
            raise DataError(path, line=line, field="item_id_list" if missing[0] != target else "item_id",
                            reason=f"ids not in the item file: {missing[:5]}")
        out[user] = (line, history, target)
    return out


def atomic_sequences(valid: Mapping, test: Mapping, test_path: Path, skips: SkipCounter) -> dict[str, list[int]]:
    """Each user's full sequence h + [v, t]; the test row must continue the validation row by its target."""
    sequences = {}
    for user in sorted(set(valid) | set(test), key=lambda u: (len(u), u)):
        if user not in test or user not in valid:
            skips.skip("user in only one of the .valid.inter / .test.inter files")
            continue
        _, h, v = valid[user]
        line, ht, t = test[user]
        if ht != [*h, v]:
            raise DataError(test_path, line=line, field="item_id_list",
                            reason=f"user {user!r}: the test history must be the validation history followed by "
                                   "the validation target (leave-one-out)")
        sequences[user] = [*h, v, t]
    return sequences


def build_atomic(raw_dir, output_dir, *, category: str = "Games", name: str | None = None,
                 category_text: str | None = None, max_history: int = 20, min_history: int = 1,
                 max_users: int | None = None, seed: int = 0, progress: bool = True, quiet: bool = False) -> dict:
    """Amazon 2018 atomic files (``<Category>.item`` + leave-one-out ``.valid/.test.inter``) -> processed data."""
    _check_options(output_dir, max_history, min_history, (0.8, 0.1, 0.1))
    raw = Path(raw_dir)
    name = name or f"amazon18-{category}"
    category_text = category_text or category_name(category)
    skips = SkipCounter()
    item_path, valid_path, test_path = find_atomic_files(raw, category)
    catalog_items = read_atomic_items(item_path)
    by_id = {it["id"]: it for it in catalog_items}
    valid = read_atomic_sequences(valid_path, set(by_id))
    test = read_atomic_sequences(test_path, set(by_id))
    read = {"items": len(catalog_items), "valid users": len(valid), "test users": len(test)}
    full = atomic_sequences(valid, test, test_path, skips)
    keep = keep_users_sample(list(full), max_users, seed, skips)
    sequences = {u: [Interaction(i, None, None) for i in full[u]] for u in full if u in keep}

    # Positions: train = targets inside the validation history (t <= n - 3 of h + [v, t]); validation = v; test = t.
    by_split: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for user, seq in sequences.items():
        n = len(seq)
        by_split["train"] += [(user, t) for t in range(min_history, n - 2)]
        if n - 2 >= min_history:
            by_split["validation"].append((user, n - 2))
            by_split["test"].append((user, n - 1))
        else:
            skips.skip(f"user with <= min_history={min_history} items before the validation target (no sample)")
    records = position_records(by_split, sequences, by_id, name=name, category=category_text,
                               max_history=max_history, progress=progress)
    train_popularity(records, catalog_items)
    summary = _summary(
        name, "atomic", raw, category_text,
        {"category": category, "max_history": max_history, "min_history": min_history, "max_users": max_users,
         "seed": seed, "train": "prefixes inside the validation history (leave-one-out)"},
        read, {s: len({u for u, _ in by_split[s]}) for s in SPLITS},
        {"users": len(sequences), "items in sequences": len({i for s in sequences.values() for i in s}),
         "interactions": sum(len(s) for s in sequences.values()),
         "histories cut to max_history": sum(1 for s in SPLITS for u, t in by_split[s] if t > max_history)},
        skips, inputs=[str(item_path), str(valid_path), str(test_path)])
    return save_processed(output_dir, records, catalog_items, summary, quiet=quiet, progress=progress)


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


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def _year_month(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{4})-(\d{1,2})", text.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def build(fmt: str, raw_dir, output_dir, **options) -> dict:
    """Dispatch to ``build_2023`` / ``build_atomic`` / ``build_csv``."""
    builders = {"2023": build_2023, "atomic": build_atomic, "csv": build_csv}
    if fmt not in builders:
        raise ValueError(f"format must be one of {sorted(builders)}, got {fmt!r}")
    return builders[fmt](raw_dir, output_dir, **options)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m preprocess.amazon",
                                description="Build a processed sequential data set with RecPO prompts from Amazon "
                                            "reviews (Amazon Reviews 2023 JSON Lines, Amazon 2018 atomic files, or "
                                            "BIGRec / D3-style CSV files). See the module docstring for each format.")
    p.add_argument("--format", required=True, choices=["2023", "atomic", "csv"], dest="fmt")
    p.add_argument("--raw_dir", required=True, help="folder with the input files")
    p.add_argument("--category", required=True,
                   help="category as in the file names (Video_Games, Musical_Instruments, CDs_and_Vinyl; Games for "
                        "the LLMRank atomic files)")
    p.add_argument("--output_dir", required=True, help="where to write train/ validation/ test/ catalog.json")
    p.add_argument("--name", default=None, help="data set name used in sample ids")
    p.add_argument("--category_text", default=None, help="category wording in the prompts (default from --category, "
                                                         "e.g. 'video games')")
    p.add_argument("--max_history", type=int_at_least(1), default=20, help="history items per sample [20]")
    p.add_argument("--max_users", type=int_at_least(1), default=None, help="keep a seeded random sample of N users")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max_users sample [0]")
    g = p.add_argument_group("--format 2023")
    g.add_argument("--window_start", type=_year_month, default=(2022, 10), help="YYYY-MM [2022-10]")
    g.add_argument("--window_end", type=_year_month, default=(2023, 10), help="YYYY-MM, exclusive [2023-10]")
    g.add_argument("--min_items", type=int_at_least(0), default=10_000,
                   help="move the window start back 3 months at a time while fewer items [10000]")
    g.add_argument("--max_title_words", type=int_at_least(1), default=20, help="longest title kept, in words [20]")
    g.add_argument("--keep_items_without_price", action="store_true",
                   help="keep items whose price is not a number (R²ec's preprocess drops them)")
    g.add_argument("--source_kcore", type=int_at_least(0), default=None,
                   help="k-core of the whole review file before the window [5 for JSON Lines, 0 for the 5-core CSV]")
    g.add_argument("--window_kcore", type=int_at_least(0), default=0, help="k-core inside the window (R²ec's K) [0]")
    g.add_argument("--split_fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VALID", "TEST"), help="temporal quantiles of target times [0.8 0.1 0.1]")
    g = p.add_argument_group("--format csv")
    g.add_argument("--item_index", default=None, help="item index JSON (default: the one *.json in --raw_dir, else "
                                                      "--raw_dir/index/<Category>.item.json as BIGRec / D3 keep it)")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    args.split_fractions = check_split_fractions_option(p, args.split_fractions)
    common = {"category": args.category, "name": args.name, "category_text": args.category_text,
              "max_history": args.max_history, "max_users": args.max_users, "seed": args.seed,
              "progress": not args.no_progress}
    if args.fmt == "2023":
        common.update(window_start=args.window_start, window_end=args.window_end, min_items=args.min_items,
                      max_title_words=args.max_title_words, require_price=not args.keep_items_without_price,
                      source_kcore=args.source_kcore, window_kcore=args.window_kcore,
                      split_fractions=tuple(args.split_fractions))
    elif args.fmt == "csv":
        common.update(item_index=args.item_index)
    try:
        return build(args.fmt, args.raw_dir, args.output_dir, **common)
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
