"""Format ``atomic`` of ``preprocess.amazon``: Amazon 2018 RecBole atomic files as RUCAIBox/LLMRank ships them:
``<Category>.item`` (``item_id:token title:token_seq``) and leave-one-out ``*.valid.inter`` / ``*.test.inter``
(``user_id:token item_id_list:token_seq item_id:token``). There is no train file and no time. Per user, with
validation history h (oldest first) and validation target v, the test row must be (h + [v], t). Samples: validation
= (h, v); test = (h + [v], t); train = every prefix inside h (target h[i] for i >= 1, the LLMRank / leave-one-out
convention), so every train target precedes the user's validation target, which precedes the test target (no leakage
along a user's sequence; across users leave-one-out has no global time cut). ``timestamp`` is null and the prompt
has no time deltas or ratings. Every item of the ``.item`` file is in the catalog.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from preprocess.amazon.records import (
    Interaction,
    _check_options,
    _summary,
    catalog_item,
    clean_text,
    keep_users_sample,
    position_records,
    train_popularity,
)
from preprocess.common import SkipCounter, require_file
from preprocess.contract import SPLITS, DataError, save_processed
from preprocess.recpo_prompts import category_name

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
