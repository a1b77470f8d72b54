"""The steps every Amazon format shares: field checks and text cleaning, input readers, interactions ->
per-user sequences -> samples -> records (RecPO prompts), the temporal split and the build summary."""
from __future__ import annotations

import csv
import gzip
import html
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tqdm import tqdm

from preprocess.common import SkipCounter, format_completion, item_line, require_file
from preprocess.contract import SPLITS, DataError, check_output_dir, is_finite_number
from preprocess.recpo_prompts import item_attributes, record_user_prompt


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
