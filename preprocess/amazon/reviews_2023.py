"""Format ``2023`` of ``preprocess.amazon``: Amazon Reviews 2023 (McAuley Lab) as R²ec's released ``preprocess.py``
builds it. Files in ``--raw_dir``: reviews ``<Category>.jsonl`` (or ``.jsonl.gz``; rows with ``user_id``,
``parent_asin``, ``rating``, ``timestamp`` in milliseconds, ...) or the benchmark's rating-only file
``<Category>.csv`` (or ``.csv.gz``; header ``user_id,parent_asin,rating,timestamp``: the 5-core file R²ec
downloads), and metadata ``meta_<Category>.jsonl`` (or ``.jsonl.gz``; rows with ``parent_asin``, ``title``,
``average_rating``, ``rating_number``, ``description`` (list of str), ``price``, ...). Steps:

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
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from preprocess.amazon.records import (
    Interaction,
    _as_int,
    _as_number,
    _as_str,
    _check_options,
    _find_one,
    _iso,
    _required,
    _summary,
    catalog_item,
    clean_text,
    iter_csv,
    iter_jsonl,
    keep_users_sample,
    position_records,
    prefix_samples,
    split_by_time,
    temporal_cuts,
    train_popularity,
)
from preprocess.common import SkipCounter
from preprocess.contract import SPLITS, DataError, save_processed
from preprocess.recpo_prompts import category_name

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
