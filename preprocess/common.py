"""Helpers the data builders share: the Rank-GRPO prompt and completion, skip counting, stable splits, reading
input files (UTF-8, unique-key JSON), option checks and the source catalog. What a builder writes, and its checks,
is the data contract in ``preprocess.contract``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from preprocess.contract import DataError, format_counts
# --------------------------------------------------------------------------------------------------------------
# Prompt and completion
# --------------------------------------------------------------------------------------------------------------

#: The text that precedes the conversation in every user prompt (Rank-GRPO paper App. D.1).
CONVERSATION_MARKER = "Here is the conversation: "

_INSTRUCTION_TEMPLATE = (
    "Pretend you are a movie recommender system.\n"
    "I will give you a conversation between a user and you (a recommender system). Based on the conversation, "
    "you need to reply with {n} recommendations. List the standardized English title of each movie in each line "
    'in the form of "movie name" (release_year) with NO extra words or sentences.\n' + CONVERSATION_MARKER
)

#: Rank-GRPO's instruction, byte-identical to the prompts of the released Reddit-v2 data (20 items).
RANK_GRPO_INSTRUCTION = _INSTRUCTION_TEMPLATE.format(n=20)


def instruction(n_items: int = 20) -> str:
    """The Rank-GRPO instruction asking for ``n_items`` recommendations (ends with ``CONVERSATION_MARKER``)."""
    if not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"n_items must be a positive int, got {n_items!r}")
    return _INSTRUCTION_TEMPLATE.format(n=n_items)


def build_prompt(conversation: str, n_items: int = 20) -> list[dict]:
    """One user message: the Rank-GRPO instruction followed by ``conversation``."""
    if not isinstance(conversation, str):
        raise TypeError(f"conversation must be a str, got {type(conversation).__name__}")
    return [{"role": "user", "content": instruction(n_items) + conversation}]


def item_line(title: str, year: int | None) -> str:
    """``Title (Year)``, or ``Title`` when the year is unknown."""
    return f"{title} ({year})" if year is not None else title


def format_completion(titles: Sequence[str]) -> list[dict]:
    """One assistant message: one item per line, no numbering, no trailing newline."""
    lines = [str(t).strip() for t in titles]
    bad = [t for t in lines if not t or "\n" in t]
    if bad:
        raise ValueError(f"completion lines must be non-empty single lines, got {bad[:3]!r}")
    return [{"role": "assistant", "content": "\n".join(lines)}]


def pad_with_popular(titles_ids: Sequence[int], popular_ids: Iterable[int], exclude: set[int] | frozenset[int],
                     n: int = 20) -> list[int]:
    """Fill a completion list up to ``n`` ids with the most popular items that are neither excluded nor listed.

    ``titles_ids`` is kept in order (cut to ``n``); ``popular_ids`` must be ordered most popular first.
    The result can be shorter than ``n`` when the popular list runs out.
    """
    out = list(titles_ids)[:n]
    listed = set(out)
    if len(out) < n:
        for item in popular_ids:
            if item in listed or item in exclude:
                continue
            out.append(item)
            listed.add(item)
            if len(out) >= n:
                break
    return out


#: ``stats`` keys of the ground-truth ids a completion written from ground truth leaves out (they stay in the
#: record's ``groundtruth``). Shared by every builder that writes such completions, so they are counted alike.
GT_UNDATED_NOT_WRITTEN = "groundtruth ids without a year (kept in groundtruth, not written in the completion)"
GT_BEYOND_N_ITEMS_NOT_WRITTEN = "groundtruth ids beyond n_items (kept in groundtruth, not written in the completion)"


def groundtruth_completion_ids(groundtruth: Sequence[int], year_of, popular_ids: Iterable[int],
                               seen: Iterable[int], n_items: int, stats: Counter) -> list[int]:
    """The ids of a completion written from ground truth: the distinct ground-truth ids that have a year, in order,
    cut to ``n_items``, padded with ``popular_ids`` the user has not seen (``pad_with_popular``).

    A yearless id cannot be written as ``Title (Year)``, and a completion holds at most ``n_items`` lines: the
    ids left out for either reason are counted in ``stats`` (``GT_UNDATED_NOT_WRITTEN``,
    ``GT_BEYOND_N_ITEMS_NOT_WRITTEN``), never dropped silently.
    """
    distinct = list(dict.fromkeys(groundtruth))
    dated = [i for i in distinct if year_of(i) is not None]
    stats[GT_UNDATED_NOT_WRITTEN] += len(distinct) - len(dated)
    stats[GT_BEYOND_N_ITEMS_NOT_WRITTEN] += max(0, len(dated) - n_items)
    return pad_with_popular(dated, popular_ids, exclude=set(seen), n=n_items)


# --------------------------------------------------------------------------------------------------------------
# Skip counting, stable hashing, input files
# --------------------------------------------------------------------------------------------------------------


class SkipCounter:
    """Counts things left out of the output, each with a human-readable reason. Nothing is dropped silently."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def skip(self, reason: str, n: int = 1) -> None:
        if n < 0:
            raise ValueError("n must be >= 0")
        if n:
            self._counts[reason] += n

    def __getitem__(self, reason: str) -> int:
        return self._counts.get(reason, 0)

    def __len__(self) -> int:
        return len(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        """Reasons sorted by decreasing count, then alphabetically (deterministic)."""
        return dict(sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def format(self, title: str = "skipped") -> str:
        return format_counts(title, self.as_dict())

    def print(self, title: str = "skipped") -> None:
        print(self.format(title))



def stable_bucket(key: str, salt: str = "") -> float:
    """A deterministic number in [0, 1) from ``key`` (sha256; independent of PYTHONHASHSEED and platform)."""
    digest = hashlib.sha256((salt + "\x00" + key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "") -> str:
    """Assign ``key`` to train/validation/test with the given fractions by a stable hash."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    u = stable_bucket(key, salt)
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def assign_split(key: str, named: str | None, fractions: Sequence[float] = (0.8, 0.1, 0.1), *,
                 carve_validation: float = 0.0) -> str:
    """The split of one sample: its source's ``named`` split, else ``hash_split(key, fractions)``.

    ``carve_validation`` moves that share of a ``named == "train"`` source's keys to validation by a stable hash
    (salt ``"valid"``, independent of the 80/10/10 buckets), for inputs that ship a train file but no validation
    file. Every key of one conversation/request gets the same split, so a group never straddles two splits.
    """
    if named is None:
        return hash_split(key, fractions)
    if named == "train" and carve_validation > 0 and stable_bucket(key, "valid") < carve_validation:
        return "validation"
    return named


def split_from_name(name: str) -> str | None:
    """``train`` / ``validation`` / ``test`` when a file or split name says so unambiguously, else None."""
    import re

    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    found = set()
    if tokens & {"train", "training"}:
        found.add("train")
    if tokens & {"val", "valid", "validation", "dev"}:
        found.add("validation")
    if tokens & {"test", "testing"}:
        found.add("test")
    return found.pop() if len(found) == 1 else None


def read_text_utf8(path: str | os.PathLike) -> str:
    """Read a whole file as UTF-8 (a leading byte-order mark, as Excel writes, is dropped); a decoding error becomes
    a DataError naming the file and the line."""
    raw = require_file(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(path, line=line, reason=f"not valid UTF-8 (byte {raw[err.start]:#04x} at offset "
                                                f"{err.start}); re-encode the file as UTF-8") from None


def iter_lines_utf8(path: str | os.PathLike):
    """Yield ``(line_number, text)`` (1-based) decoding each line as UTF-8 (a byte-order mark opening line 1 is
    dropped), with DataErrors naming the line."""
    with open(require_file(path), "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(path, line=number, reason=f"not valid UTF-8 (byte {raw[err.start]:#04x} at "
                                                          f"column {err.start + 1}); re-encode the file as UTF-8"
                                ) from None


def require_file(path: str | os.PathLike, what: str = "a file", option: str | None = None) -> Path:
    """``path`` as a Path when it is a file; else a DataError naming it (a directory where a file is expected used
    to surface as a raw IsADirectoryError). ``option`` names the command-line option the path came from."""
    path = Path(path)
    if path.is_file():
        return path
    prefix = f"{option} " if option else ""
    if path.is_dir():
        raise DataError(path, reason=f"{prefix}is a directory, expected {what}")
    raise DataError(path, reason=f"{prefix}not found" if option else f"not found (expected {what})")



def json_loads_unique(text: str, path: str | os.PathLike):
    """``json.loads`` that refuses an object with a repeated key (plain JSON silently keeps the last one)."""
    def unique(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise DataError(path, reason=f"duplicate key {key!r} (JSON keeps only the last one; remove the other)")
            out[key] = value
        return out
    return json.loads(text, object_pairs_hook=unique)


def int_at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum`` (argparse names the option in its error)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    return parse


def check_split_fractions_option(parser, fractions: Sequence[float], option: str = "--split_fractions") -> tuple:
    """``fractions`` as a tuple, or ``parser.error`` naming ``option`` unless they are three numbers >= 0 summing
    to 1 with a positive train share (what every builder requires)."""
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9 or fractions[0] <= 0 or \
            not all(math.isfinite(f) for f in fractions):
        parser.error(f"argument {option}: three numbers >= 0 summing to 1 with TRAIN > 0, got "
                     + " ".join(f"{f:g}" for f in fractions))
    return tuple(fractions)



def load_source_catalog(raw_dir: str | os.PathLike, catalog_path, default_name: str):
    """A builder's source catalog: ``catalog_path`` or ``<raw_dir>/<default_name>`` (the folder of ``raw_dir`` when
    it is a file); a catalog that cannot be loaded is a DataError naming that file."""
    from rewards.catalog import CatalogError, load_catalog

    raw = Path(raw_dir)
    path = Path(catalog_path) if catalog_path is not None else (raw if raw.is_dir() else raw.parent) / default_name
    if path.is_dir():
        raise DataError(path, reason=f"{'--catalog_path ' if catalog_path is not None else ''}is a directory, "
                                     "expected a catalog file")
    try:
        return path, load_catalog(path)
    except CatalogError as err:
        raise DataError(path, reason=f"cannot load the catalog: {err}") from err

