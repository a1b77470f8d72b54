"""Amazon product reviews -> processed sequential data set with RecPO (R²ec) prompts. Three input formats.

Usage::

    python -m preprocess.amazon --format 2023 --raw_dir raw/amazon2023 --category Video_Games \
        --output_dir processed_datasets/amazon23-games
    python -m preprocess.amazon --format atomic --raw_dir ../shared/data/amazon18_games_llmrank --category Games \
        --output_dir processed_datasets/amazon18-games
    python -m preprocess.amazon --format csv --raw_dir raw/d3/Video_Games --category Video_Games \
        --output_dir processed_datasets/d3-games

Formats (``--format``), one module each:

* ``2023`` — Amazon Reviews 2023 JSON Lines or its 5-core rating CSV, with metadata
  (``preprocess.amazon.reviews_2023``);
* ``atomic`` — Amazon 2018 RecBole atomic files as RUCAIBox/LLMRank ships them (``preprocess.amazon.atomic``);
* ``csv`` — the per-category CSV layout of BIGRec / D3-style repositories (``preprocess.amazon.csv_files``).

Each module's docstring describes its input files and steps. The steps every format shares (interactions ->
per-user sequences -> samples -> records, the temporal split, the summary) are in ``preprocess.amazon.records``.

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
import re
import sys

from preprocess.amazon.atomic import build_atomic
from preprocess.amazon.csv_files import build_csv
from preprocess.amazon.reviews_2023 import build_2023
from preprocess.common import check_split_fractions_option, int_at_least
from preprocess.contract import DataError

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
